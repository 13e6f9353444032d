#!/usr/bin/env bash
# Writes under maxmemory, Chorus vs redis-server, side by side in one run (#14).
#
#   bench/eviction.sh                       # full run
#   N=500000 ROUNDS=1 bench/eviction.sh     # quick look
#
# Each server starts with `maxmemory $MAXMEMORY` and `maxmemory-policy $POLICY`; then
# redis-benchmark SETs $N values of $SIZE bytes over 10 million random keys (-c 50 -P 16),
# far more than fit, so nearly every write past the first seconds makes an eviction. Reported:
# SET/s while evicting, then what the server says (used_memory, evicted_keys, keys) and its RSS.
# Each server is pinned to CPU 0 and redis-benchmark to CPU 1 (taskset); the servers alternate
# over $ROUNDS rounds and the table reports medians.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-2000000}
ROUNDS=${ROUNDS:-3}
MAXMEMORY=${MAXMEMORY:-64mb}
POLICY=${POLICY:-allkeys-lru}
SIZE=${SIZE:-100}

source bench/common.sh
ensure_tools "redis-server redis-benchmark redis-cli" "redis-server redis-tools"
cargo build --release -q

info() { redis-cli -p "$1" INFO "$2" | tr -d '\r' | awk -F: -v k="$3" '$1 == k {print $2}'; }

RESULTS="$WORK/results"
: > "$RESULTS"
for round in $(seq 1 "$ROUNDS"); do
    for server in redis chorus; do
        port=$(free_port)
        case $server in
            redis) taskset -c 0 redis-server --port "$port" --bind 127.0.0.1 --save "" \
                --appendonly no --maxmemory "$MAXMEMORY" --maxmemory-policy "$POLICY" \
                --daemonize no --logfile "$WORK/redis.log" & ;;
            chorus) taskset -c 0 ./target/release/chorus server --port "$port" \
                --server-threads 1 --maxmemory "$MAXMEMORY" --maxmemory-policy "$POLICY" \
                2>>"$WORK/chorus.log" & ;;
        esac
        pid=$!
        PIDS+=("$pid")
        wait_ready "$port"
        rps=$(taskset -c 1 redis-benchmark -p "$port" -c 50 -P 16 -n "$N" -r 10000000 \
            -d "$SIZE" -t set --csv 2>/dev/null | awk -F'","' 'NR>1 {gsub(/"/,"",$2); print $2}')
        used=$(info "$port" memory used_memory)
        evicted=$(info "$port" stats evicted_keys)
        keys=$(redis-cli -p "$port" DBSIZE)
        rss=$(awk '/VmRSS/ {print $2 * 1024}' "/proc/$pid/status")
        echo "$server $rps $used $rss $evicted $keys" >> "$RESULTS"
        stop "$pid"
        echo "round $round: $server done" >&2
    done
done

echo
echo "SET under maxmemory $MAXMEMORY ($POLICY), $SIZE-byte values, -n $N -r 10000000 -c 50 -P 16"
echo "(median of $ROUNDS rounds; server on CPU 0, client on CPU 1)"
printf '%-8s %12s %14s %14s %12s %10s\n' server "SET/s" used_memory RSS evicted keys
for server in redis chorus; do
    col() { awk -v s="$server" -v c="$1" '$1 == s {print $c}' "$RESULTS" | median; }
    printf '%-8s %12.0f %14.0f %14.0f %12.0f %10.0f\n' "$server" "$(col 2)" "$(col 3)" \
        "$(col 4)" "$(col 5)" "$(col 6)"
done
r=$(awk '$1 == "redis" {print $2}' "$RESULTS" | median)
c=$(awk '$1 == "chorus" {print $2}' "$RESULTS" | median)
echo "chorus/redis SET: $(awk -v c="$c" -v r="$r" 'BEGIN {printf "%.2f", c / r}')"
machine
