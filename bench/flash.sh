#!/usr/bin/env bash
# The flash tier (#14): a hot set that fits in maxmemory, total data at 4x maxmemory.
#
#   bench/flash.sh                       # 3 rounds
#   KEYS=400000 HOT=50000 ROUNDS=3 bench/flash.sh
#
# Per round, two chorus nodes pinned to CPU 0, one at a time:
#   ram:   no limit, every key in RAM (the baseline);
#   flash: storage-provider flash, maxmemory = a quarter of the data.
# Each is loaded with KEYS keys of SIZE bytes (key:%012d, redis-benchmark's names), then
# GET over the HOT first keys (-r HOT) is measured at -P 16 and -P 1 (redis-benchmark on
# CPU 1, -c 50) after one warming pass. Then, on the flash node: GET latency over all keys
# (mostly cold) at -c 1 -P 1, its RSS, and the store's bytes on disk per key.
set -euo pipefail
cd "$(dirname "$0")/.."

KEYS=${KEYS:-400000}
HOT=${HOT:-50000}
SIZE=${SIZE:-1000}
ROUNDS=${ROUNDS:-3}
N=${N:-1000000}

source bench/common.sh
ensure_tools "redis-server redis-benchmark redis-cli" "redis-server redis-tools"
cargo build --release -q

DATA=$((KEYS * SIZE))
LIMIT=$((DATA / 4))

start() { # start NAME -> "pid port dir"
    local port dir; port=$(free_port); dir="$WORK/$1-$RANDOM"; mkdir -p "$dir"
    case $1 in
        ram) taskset -c 0 ./target/release/chorus server --port "$port" --server-threads 1 \
                 2>>"$WORK/chorus.log" & ;;
        flash) taskset -c 0 ./target/release/chorus server --port "$port" --server-threads 1 \
                 --storage-provider flash "$dir" --maxmemory "$LIMIT" \
                 --maxmemory-policy allkeys-lru 2>>"$WORK/chorus.log" & ;;
    esac
    PIDS+=($!); echo "$! $port $dir"
}

# load PORT: SET key:%012d for every key, through redis-cli --pipe.
load() {
    python3 - "$KEYS" "$SIZE" <<'PY' | taskset -c 1 redis-cli -p "$1" --pipe >/dev/null
import sys
keys, size = int(sys.argv[1]), int(sys.argv[2])
out = sys.stdout.buffer
value = b"v" * size
for i in range(keys):
    key = b"key:%012d" % i
    out.write(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(key), key, size, value))
PY
}

get_hot() { # get_hot PORT PIPELINE -> rps
    taskset -c 1 redis-benchmark -p "$1" -c 50 -P "$2" -n "$N" -r "$HOT" -t get --csv 2>/dev/null \
        | awk -F'","' 'NR>1 {gsub(/"/,"",$2); print $2}'
}

info() { redis-cli -p "$1" info "$2" | tr -d '\r' | awk -F: -v f="$3" '$1==f {print $2}'; }

RESULTS="$WORK/results"
: > "$RESULTS"
for round in $(seq 1 "$ROUNDS"); do
    for server in ram flash; do
        read -r pid port dir < <(start "$server")
        wait_ready "$port"
        t0=$(date +%s.%N); load "$port"; t1=$(date +%s.%N)
        echo "$server load $(awk -v a="$t0" -v b="$t1" -v k="$KEYS" 'BEGIN {printf "%.0f", k / (b - a)}')" >> "$RESULTS"
        if [ "$server" = flash ]; then
            redis-cli -p "$port" save >/dev/null
            echo "flash cold_after_load $(info "$port" persistence flash_cold_keys)" >> "$RESULTS"
        fi
        get_hot "$port" 16 >/dev/null # warms the hot set
        for p in 16 1; do echo "$server get_hot_P$p $(get_hot "$port" "$p")" >> "$RESULTS"; done
        if [ "$server" = flash ]; then
            echo "flash cold_hot_set $(info "$port" persistence flash_cold_keys)" >> "$RESULTS"
            echo "flash used_memory $(info "$port" memory used_memory)" >> "$RESULTS"
            echo "flash engine_memory $(info "$port" memory used_memory_store_engine)" >> "$RESULTS"
            echo "flash rss $(( $(awk '/VmRSS/ {print $2}' /proc/"$pid"/status) * 1024 ))" >> "$RESULTS"
            # Latency over every key: mostly cold ones, read through from disk.
            lat=$(taskset -c 1 redis-benchmark -p "$port" -c 1 -P 1 -n 20000 -r "$KEYS" -t get 2>/dev/null \
                | tr '\r' '\n' | awk '/latency summary/ {getline; getline; print $3, $4, $5; exit}')
            read -r p50 p95 p99 <<<"$lat"
            echo "flash cold_p50_ms $p50" >> "$RESULTS"
            echo "flash cold_p99_ms $p99" >> "$RESULTS"
            echo "flash warmed $(info "$port" persistence flash_warmed)" >> "$RESULTS"
            echo "flash disk_bytes $(stat -c %s "$dir/chorus.redb")" >> "$RESULTS"
        else
            echo "ram used_memory $(info "$port" memory used_memory)" >> "$RESULTS"
            echo "ram rss $(( $(awk '/VmRSS/ {print $2}' /proc/"$pid"/status) * 1024 ))" >> "$RESULTS"
        fi
        stop "$pid"
        echo "round $round: $server done" >&2
    done
done

m() { median_of "$1" "$2"; }
echo
echo "Flash tier: $KEYS keys x $SIZE B ($((DATA / 1000000)) MB), maxmemory $((LIMIT / 1000000)) MB, hot set $HOT keys"
echo "(medians of $ROUNDS rounds; server on CPU 0 with one thread, redis-benchmark on CPU 1, -c 50)"
printf '%-24s %14s %14s %8s\n' figure ram flash flash/ram
for f in get_hot_P16 get_hot_P1 load; do
    awk -v f="$f" -v r="$(m ram "$f")" -v c="$(m flash "$f")" \
        'BEGIN {printf "%-24s %14.0f %14.0f %8.2f\n", f " (ops/s)", r, c, c / r}'
done
awk -v r="$(m ram rss)" -v c="$(m flash rss)" -v l="$LIMIT" \
    'BEGIN {printf "%-24s %14.1f %14.1f   (maxmemory %.1f MB)\n", "RSS (MB)", r / 1e6, c / 1e6, l / 1e6}'
awk -v r="$(m ram used_memory)" -v c="$(m flash used_memory)" \
    'BEGIN {printf "%-24s %14.1f %14.1f\n", "used_memory (MB)", r / 1e6, c / 1e6}'
echo "flash: store engine memory $(awk -v e="$(m flash engine_memory)" 'BEGIN {printf "%.1f", e / 1e6}') MB;" \
     "cold keys after load $(m flash cold_after_load), with the hot set warm $(m flash cold_hot_set)"
echo "flash: GET over all keys at -c 1 -P 1 (mostly cold): p50 $(m flash cold_p50_ms) ms, p99 $(m flash cold_p99_ms) ms"
awk -v d="$(m flash disk_bytes)" -v k="$KEYS" -v s="$SIZE" \
    'BEGIN {printf "flash: store file %.1f MB, %.0f B per key, %.2fx the keys and values (%d B each)\n", d / 1e6, d / k, d / (k * (s + 16)), s + 16}'
echo
machine
