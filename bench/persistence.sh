#!/usr/bin/env bash
# What persistence costs: chorus with `appendonly yes` next to redis-server with
# `appendonly yes`, at the same appendfsync, in one run; chorus in memory as the
# baseline.
#
#   bench/persistence.sh                    # appendfsync everysec, 3 rounds
#   FSYNC=always N=20000 bench/persistence.sh
#
# redis-benchmark -t set,incr -n $N -r 100000 -c 50 at -P 16 and -P 1; servers pinned
# to CPU 0, the client to CPU 1; the servers alternate over $ROUNDS rounds; medians.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-1000000}
ROUNDS=${ROUNDS:-3}
FSYNC=${FSYNC:-everysec}

source bench/common.sh
ensure_tools "redis-server redis-benchmark redis-cli" "redis-server redis-tools"
cargo build --release -q

start() { # start NAME -> "pid port"
    local port dir; port=$(free_port); dir="$WORK/$1-$RANDOM"; mkdir -p "$dir"
    case $1 in
        redis) taskset -c 0 redis-server --port "$port" --bind 127.0.0.1 --save "" \
                   --appendonly yes --appendfsync "$FSYNC" --dir "$dir" \
                   --daemonize no --logfile "$WORK/redis.log" & ;;
        chorus) taskset -c 0 ./target/release/chorus server --port "$port" --server-threads 1 \
                   --appendonly yes --appendfsync "$FSYNC" --dir "$dir" 2>>"$WORK/chorus.log" & ;;
        memory) taskset -c 0 ./target/release/chorus server --port "$port" --server-threads 1 \
                   2>>"$WORK/chorus.log" & ;;
    esac
    PIDS+=($!); echo "$! $port"
}

RESULTS="$WORK/results"
: > "$RESULTS"
for round in $(seq 1 "$ROUNDS"); do
    for server in redis chorus memory; do
        read -r pid port < <(start "$server")
        wait_ready "$port"
        for p in 16 1; do
            run_bench "$port" "$p" set,incr | while read -r test rps; do echo "$server $test P$p $rps" >> "$RESULTS"; done
        done
        stop "$pid"
        echo "round $round: $server done" >&2
    done
done

echo
echo "Throughput with appendonly yes, appendfsync $FSYNC, ops/s (median of $ROUNDS; -n $N -r 100000 -c 50; server on CPU 0, client on CPU 1)"
printf '%-6s %-4s %12s %12s %8s %14s %10s\n' test pipe redis-aof chorus-log ratio chorus-memory log/memory
for p in P16 P1; do
    for t in SET INCR; do
        r=$(awk -v t="$t" -v p="$p" '$1=="redis" && $2==t && $3==p {print $4}' "$RESULTS" | median)
        c=$(awk -v t="$t" -v p="$p" '$1=="chorus" && $2==t && $3==p {print $4}' "$RESULTS" | median)
        m=$(awk -v t="$t" -v p="$p" '$1=="memory" && $2==t && $3==p {print $4}' "$RESULTS" | median)
        awk -v t="$t" -v p="$p" -v r="$r" -v c="$c" -v m="$m" \
            'BEGIN {printf "%-6s %-4s %12.0f %12.0f %8.2f %14.0f %10.2f\n", t, p, r, c, c / r, m, c / m}'
    done
done
echo
machine
redis-server --version
