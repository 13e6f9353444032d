#!/usr/bin/env bash
# Chorus vs redis-server, side by side on this machine, in one run.
#
#   bench/vs-redis.sh            # full run (about 6 minutes on 2 vCPUs)
#   N=200000 ROUNDS=1 bench/vs-redis.sh   # quick look
#   ONLY=memory bench/vs-redis.sh         # the memory figures alone
#
# Throughput: redis-benchmark -t set,get,incr -n $N -r 100000 at -c 50 -P 16 and -P 1.
# Each server is pinned to CPU 0 and redis-benchmark to CPU 1 (taskset); the servers
# alternate over $ROUNDS rounds and the table reports medians. Chorus runs with one
# server thread (pinned) and, as a separate column, with two threads unpinned.
# Memory: RSS growth after 1,000,000 SETs of 16-byte keys and 32-byte values, and the
# growth of INFO's used_memory (the allocator's bytes: jemalloc's for redis-server, the
# counted glibc allocations for Chorus).
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-1000000}
ROUNDS=${ROUNDS:-3}
KEYS_FOR_RSS=${KEYS_FOR_RSS:-1000000}

source bench/common.sh
ensure_tools "redis-server redis-benchmark redis-cli" "redis-server redis-tools"
cargo build --release -q

rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }




RESULTS="$WORK/results"
: > "$RESULTS"
if [ "${ONLY:-}" != memory ]; then
for round in $(seq 1 "$ROUNDS"); do
    for server in redis chorus1 chorus2; do
        case $server in
            redis) read -r pid port < <(start_redis) ;;
            chorus1) read -r pid port < <(start_chorus 0 1) ;;
            chorus2) read -r pid port < <(start_chorus 0,1 2) ;;
        esac
        wait_ready "$port"
        for p in 16 1; do
            run_bench "$port" "$p" set,get,incr | while read -r test rps; do
                echo "$server $test P$p $rps" >> "$RESULTS"
            done
        done
        stop "$pid"
        echo "round $round: $server done" >&2
    done
done

echo
echo "Throughput, ops/s (median of $ROUNDS rounds; -n $N -r 100000 -c 50; server on CPU 0, client on CPU 1)"
printf '%-6s %-4s %12s %12s %8s %14s %8s\n' test pipe redis chorus-1t ratio chorus-2t-unpin ratio
for p in P16 P1; do
    for t in SET GET INCR; do
        r=$(awk -v t="$t" -v p="$p" '$1=="redis" && $2==t && $3==p {print $4}' "$RESULTS" | median)
        c1=$(awk -v t="$t" -v p="$p" '$1=="chorus1" && $2==t && $3==p {print $4}' "$RESULTS" | median)
        c2=$(awk -v t="$t" -v p="$p" '$1=="chorus2" && $2==t && $3==p {print $4}' "$RESULTS" | median)
        awk -v t="$t" -v p="$p" -v r="$r" -v c1="$c1" -v c2="$c2" \
            'BEGIN {printf "%-6s %-4s %12.0f %12.0f %8.2f %14.0f %8.2f\n", t, p, r, c1, c1 / r, c2, c2 / r}'
    done
done
fi

# Memory: RSS growth per key after loading KEYS_FOR_RSS keys through redis-cli --pipe.
python3 - "$KEYS_FOR_RSS" > "$WORK/load.resp" <<'PY'
import sys
n = int(sys.argv[1])
out = sys.stdout.buffer
value = b"v" * 32
for i in range(n):
    key = b"key:%012d" % i
    out.write(b"*3\r\n$3\r\nSET\r\n$16\r\n" + key + b"\r\n$32\r\n" + value + b"\r\n")
PY

echo
echo "Memory after $KEYS_FOR_RSS SETs (16-byte keys, 32-byte values)"
used_memory() { redis-cli -p "$1" INFO memory | awk -F: '/^used_memory:/ {print $2+0}'; }
printf '%-10s %12s %12s %14s %16s\n' server rss_before rss_after bytes_per_key alloc_per_key
for server in redis chorus; do
    case $server in
        redis) read -r pid port < <(start_redis) ;;
        chorus) read -r pid port < <(start_chorus 0 1) ;;
    esac
    wait_ready "$port"
    before=$(rss_kb "$pid")
    used_before=$(used_memory "$port")
    taskset -c 1 redis-cli -p "$port" --pipe < "$WORK/load.resp" >/dev/null
    keys=$(redis-cli -p "$port" DBSIZE)
    after=$(rss_kb "$pid")
    used_after=$(used_memory "$port")
    per_key=$(awk -v a="$after" -v b="$before" -v k="$keys" 'BEGIN {printf "%d", (a - b) * 1024 / k}')
    alloc_per_key=$(awk -v a="$used_after" -v b="$used_before" -v k="$keys" 'BEGIN {printf "%d", (a - b) / k}')
    printf '%-10s %10s kB %10s kB %14s %16s\n' "$server" "$before" "$after" "$per_key" "$alloc_per_key"
    echo "$server $per_key" >> "$WORK/mem"
    stop "$pid"
done
r=$(awk '$1=="redis" {print $2}' "$WORK/mem"); c=$(awk '$1=="chorus" {print $2}' "$WORK/mem")
awk -v c="$c" -v r="$r" 'BEGIN {printf "chorus/redis bytes per key: %.2f\n", c / r}'
echo
machine
redis-server --version
