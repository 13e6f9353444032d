#!/usr/bin/env bash
# Reads on a node with a linked replicating peer against a standalone node, paired (issue #13's
# "with a replicating peer >= 0.75x standalone" for its read commands).
#
#   bench/reads_with_peer.sh
#   PAIRS=15 N=500000 bench/reads_with_peer.sh
#
# A standalone node and node A (linked to node B) both run on CPU 0, one server thread each;
# B runs on CPU 1 at nice 19 with the client. Both are filled alike (a hash, a set and a sorted
# set of up to 100,000 elements, through redis-benchmark), A's writes reach B (`WAIT 1`), then
# each read runs as $PAIRS pairs of redis-benchmark runs (-c 50 -P 16 -n $N -r 100000), the
# two nodes in turn, the order swapped every pair. Prints the median of the pairs' ratios.
set -euo pipefail
cd "$(dirname "$0")/.."

PAIRS=${PAIRS:-9}
N=${N:-1000000}

source bench/common.sh
ensure_tools "redis-benchmark redis-cli" "redis-tools"
[ -n "${CHORUS_BUILT:-}" ] || cargo build --release -q -p chorus

s=$(free_repl_port); start 0 "$s"
pa=$(free_repl_port); pb=$(free_repl_port)
start 0 "$pa" --masterauth bench --replicaof 127.0.0.1 "$pb"
start 1 "$pb" --masterauth bench --replicaof 127.0.0.1 "$pa"; b=$STARTED
for t in /proc/"$b"/task/*; do renice -n 19 -p "${t##*/}" >/dev/null; done
wait_linked "$pa"

fill() {
    for cmd in "HSET myhash element:__rand_int__ v" "SADD myset element:__rand_int__" \
        "ZADD lb __rand_int__ element:__rand_int__"; do
        read -ra words <<< "$cmd"
        taskset -c 1 redis-benchmark -p "$1" -c 50 -P 16 -n 300000 -r 100000 -q "${words[@]}" >/dev/null
    done
}
fill "$s"; fill "$pa"
redis-cli -p "$pa" WAIT 1 60000 >/dev/null

rps() { # rps PORT WORDS...
    local port=$1; shift
    taskset -c 1 redis-benchmark -p "$port" -c 50 -P 16 -n "$N" -r 100000 --csv "$@" 2>/dev/null \
        | awk -F'","' 'NR>1 {gsub(/"/,"",$2); print $2}' | tail -1
}

echo "with a peer / standalone, median of $PAIRS paired runs (-n $N -r 100000 -c 50 -P 16)"
printf '%-40s %8s %14s %14s\n' command ratio standalone with-peer
for cmd in "HGET myhash element:__rand_int__" "SISMEMBER myset element:__rand_int__" \
    "ZSCORE lb element:__rand_int__" "ZRANGE lb 0 9"; do
    read -ra words <<< "$cmd"
    : > "$WORK/pairs"
    for i in $(seq 1 "$PAIRS"); do
        if [ $((i % 2)) = 0 ]; then
            a=$(rps "$pa" "${words[@]}"); o=$(rps "$s" "${words[@]}")
        else
            o=$(rps "$s" "${words[@]}"); a=$(rps "$pa" "${words[@]}")
        fi
        echo "$o $a" >> "$WORK/pairs"
    done
    printf '%-40s %8.3f %14.0f %14.0f\n' "$cmd" "$(awk '{print $2 / $1}' "$WORK/pairs" | median)" \
        "$(awk '{print $1}' "$WORK/pairs" | median)" "$(awk '{print $2}' "$WORK/pairs" | median)"
done
machine
