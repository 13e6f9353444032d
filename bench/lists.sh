#!/usr/bin/env bash
# List commands, Chorus vs redis-server, side by side in one run (#15).
#
#   bench/lists.sh                   # full run
#   N=200000 ROUNDS=1 bench/lists.sh # quick look
#
# Throughput: redis-benchmark's own list tests, -n $N -c 50 -P 16, each on one list
# (`mylist`): LPUSH, RPUSH, LPOP, RPOP, then LPUSH of $N elements and LRANGE 0 99
# (`lrange_100`). Each server is pinned to CPU 0 and redis-benchmark to CPU 1 (taskset);
# the servers alternate over $ROUNDS rounds and the table reports medians.
# Memory: RSS growth per element of a 1M-element list of 16-byte values, loaded with
# redis-cli --pipe (redis-server keeps it as a quicklist of listpacks).
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-1000000}
ROUNDS=${ROUNDS:-3}
ELEMENTS=${ELEMENTS:-1000000}

source bench/common.sh
ensure_tools "redis-server redis-benchmark redis-cli" "redis-server redis-tools"
cargo build --release -q

rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

# list_bench PORT -> lines "TEST rps" (spaces in a test's name as _).
list_bench() {
    taskset -c 1 redis-benchmark -p "$1" -c 50 -P 16 -n "$N" -t lpush,rpush,lpop,rpop,lrange_100 \
            --csv 2>/dev/null \
        | awk -F'","' 'NR>1 {gsub(/"/,"",$1); gsub(/"/,"",$2); gsub(/ /,"_",$1); print $1, $2}'
}

RESULTS="$WORK/results"
: > "$RESULTS"
[ "${ONLY:-}" = memory ] && ROUNDS=0
for round in $(seq 1 "$ROUNDS"); do
    for server in redis chorus; do
        read -r pid port < <(start_server "$server")
        wait_ready "$port"
        list_bench "$port" | while read -r test rps; do echo "$server $test $rps" >> "$RESULTS"; done
        stop "$pid"
        echo "round $round: $server done" >&2
    done
done

[ "$ROUNDS" -gt 0 ] && {
echo
echo "Throughput, ops/s (median of $ROUNDS rounds; -n $N -c 50 -P 16; server on CPU 0, client on CPU 1)"
printf '%-40s %12s %12s %8s\n' test redis chorus ratio
for t in $(awk '$1=="redis" {print $2}' "$RESULTS" | awk '!seen[$0]++'); do
    r=$(median_of redis "$t")
    c=$(median_of chorus "$t")
    awk -v t="$t" -v r="$r" -v c="$c" 'BEGIN {printf "%-40s %12.0f %12.0f %8.2f\n", t, r, c, c / r}'
done
}

python3 - "$ELEMENTS" "$WORK" <<'PY'
import sys
n, work = int(sys.argv[1]), sys.argv[2]
def cmd(*args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out
with open(work + "/list.resp", "wb") as f:
    for i in range(0, n, 100):
        f.write(cmd(b"RPUSH", b"biglist", *[b"v%015d" % j for j in range(i, min(n, i + 100))]))
PY

echo
echo "Memory: RSS growth per element of a list of $ELEMENTS 16-byte values"
printf '%-8s %14s\n' server bytes_per_element
for server in redis chorus; do
    read -r pid port < <(start_server "$server")
    wait_ready "$port"
    before=$(rss_kb "$pid")
    taskset -c 1 redis-cli -p "$port" --pipe < "$WORK/list.resp" >/dev/null
    after=$(rss_kb "$pid")
    elements=$(redis-cli -p "$port" LLEN biglist)
    per=$(awk -v a="$after" -v b="$before" -v k="$elements" 'BEGIN {printf "%d", (a - b) * 1024 / k}')
    printf '%-8s %14s\n' "$server" "$per"
    echo "$server $per" >> "$WORK/mem"
    stop "$pid"
done
r=$(awk '$1=="redis" {print $2}' "$WORK/mem")
c=$(awk '$1=="chorus" {print $2}' "$WORK/mem")
awk -v c="$c" -v r="$r" 'BEGIN {printf "chorus/redis bytes per element: %.2f\n", c / r}'
echo
machine
redis-server --version
