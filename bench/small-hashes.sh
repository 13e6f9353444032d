#!/usr/bin/env bash
# Small hashes, two Chorus builds side by side (#13): both servers up, each loaded with
# 100,000 hashes of 10 fields (6-byte names, 16-byte values), then pairs of short
# redis-benchmark runs, old then new, for HSET of one field, HGET, HGETALL and HINCRBY
# (-c 50 -P 16 -n $N -r 100000); each line is the median of the pairs' new/old ratios.
# Servers on CPU 0 with --server-threads 1, redis-benchmark on CPU 1.
#
#   bench/small-hashes.sh OLD_BINARY NEW_BINARY
#   PAIRS=9 N=300000 bench/small-hashes.sh /tmp/old-target/release/chorus target/release/chorus
set -euo pipefail
cd "$(dirname "$0")/.."

OLD=${1:?usage: bench/small-hashes.sh OLD_BINARY NEW_BINARY}
NEW=${2:?usage: bench/small-hashes.sh OLD_BINARY NEW_BINARY}
PAIRS=${PAIRS:-9}
N=${N:-300000}

source bench/common.sh
ensure_tools "redis-benchmark redis-cli" "redis-tools"

small_hashes_resp "$WORK/small.resp"

old_port=$(free_port)
taskset -c 0 "$OLD" server --port "$old_port" --server-threads 1 >/dev/null 2>&1 &
PIDS+=($!)
new_port=$(free_port)
taskset -c 0 "$NEW" server --port "$new_port" --server-threads 1 >/dev/null 2>&1 &
PIDS+=($!)
for port in "$old_port" "$new_port"; do
    wait_ready "$port"
    redis-cli -p "$port" --pipe < "$WORK/small.resp" >/dev/null
done
echo "encoding of user:000000000001: old $(redis-cli -p "$old_port" OBJECT ENCODING user:000000000001)," \
    "new $(redis-cli -p "$new_port" OBJECT ENCODING user:000000000001)"

rps() { # rps PORT COMMAND...
    taskset -c 1 redis-benchmark -p "$1" -c 50 -P 16 -n "$N" -r 100000 --csv "${@:2}" 2>/dev/null \
        | awk -F'","' 'NR>1 {gsub(/"/,"",$2); print $2}'
}

printf '%-10s %10s %10s %8s\n' test old new new/old
while read -r name cmd; do
    : > "$WORK/ratios"
    for _ in $(seq 1 "$PAIRS"); do
        # shellcheck disable=SC2086
        a=$(rps "$old_port" $cmd)
        # shellcheck disable=SC2086
        b=$(rps "$new_port" $cmd)
        echo "$a $b" >> "$WORK/pairs"
        awk -v a="$a" -v b="$b" 'BEGIN {printf "%.3f\n", b / a}' >> "$WORK/ratios"
    done
    printf '%-10s %10.0f %10.0f %8s\n' "$name" "$a" "$b" "$(median < "$WORK/ratios")"
done <<'EOF'
HSET HSET user:__rand_int__ field3 vvvvvvvvvvvvvvvv
HGET HGET user:__rand_int__ field3
HGETALL HGETALL user:__rand_int__
HINCRBY HINCRBY cnt:__rand_int__ f 1
EOF
echo "(old and new: the last pair's ops/s; new/old: median of $PAIRS pair ratios)"
machine
