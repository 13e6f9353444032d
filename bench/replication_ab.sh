#!/usr/bin/env bash
# Two chorus builds' writer CPU per replicated write, alternated round by round: the A/B that
# bench/replication.sh (one build, standalone against replicating) cannot resolve on this
# noisy VM.
#
#   bench/replication_ab.sh OLD_BINARY NEW_BINARY
#   R=31 TEST=sadd N=1000000 bench/replication_ab.sh /tmp/old/chorus target/release/chorus
#
# Each round starts a pair of nodes of one build (A on CPU 0; B at nice 19 and the client on
# CPU 1, as bench/replication.sh), loads A with chorus-loadgen (-c 100 -P 16 -n $N -r 100000),
# waits for B (`WAIT 1`) and reads A's CPU time (user + system) per write; the builds go in
# turn, the order swapped every round. Prints each build's median and the median of the
# rounds' new/old ratios, for A and for B (its CPU per write applied: B does nothing else
# between the load's start and the `WAIT`).
set -euo pipefail
cd "$(dirname "$0")/.."

OLD=${1:?old binary}
NEW=${2:?new binary}
R=${R:-21}
TEST=${TEST:-set}
N=${N:-1000000}

source bench/common.sh
ensure_tools "redis-cli" "redis-tools"
cargo build --release -q -p chorus-loadgen

start_bin() { # start_bin BINARY CPU PORT [args...]: sets STARTED
    local bin=$1 cpu=$2 port=$3; shift 3
    taskset -c "$cpu" "$bin" server --port "$port" --server-threads 1 "$@" \
        >/dev/null 2>>"$WORK/chorus.log" &
    STARTED=$!
    PIDS+=("$STARTED")
    wait_ready "$port"
}
# one BINARY: prints "cpu_us_per_write writes_per_s b_cpu_us_per_write"
one() {
    local bin=$1 pa pb a b c0 c1 b0 b1 rps
    pa=$(free_repl_port); pb=$(free_repl_port)
    start_bin "$bin" 0 "$pa" --masterauth bench --replicaof 127.0.0.1 "$pb"; a=$STARTED
    start_bin "$bin" 1 "$pb" --masterauth bench --replicaof 127.0.0.1 "$pa"; b=$STARTED
    for t in /proc/"$b"/task/*; do renice -n 19 -p "${t##*/}" >/dev/null; done
    wait_linked "$pa"
    c0=$(cpu_s "$a"); b0=$(cpu_s "$b")
    rps=$(taskset -c 1 ./target/release/chorus-loadgen -p "$pa" -c 100 -P 16 -n "$N" -r 100000 -t "$TEST" \
        | awk -F'","' '{gsub(/"/,"",$2); print $2}')
    redis-cli -p "$pa" WAIT 1 60000 >/dev/null
    c1=$(cpu_s "$a"); b1=$(cpu_s "$b")
    stop "$a"; stop "$b"
    awk -v a="$c0" -v b="$c1" -v n="$N" -v r="$rps" -v b0="$b0" -v b1="$b1" \
        'BEGIN {printf "%.4f %.0f %.4f\n", (b - a) * 1e6 / n, r, (b1 - b0) * 1e6 / n}'
}

: > "$WORK/old"; : > "$WORK/new"
for i in $(seq 1 "$R"); do
    if [ $((i % 2)) = 0 ]; then
        one "$OLD" >> "$WORK/old"; one "$NEW" >> "$WORK/new"
    else
        one "$NEW" >> "$WORK/new"; one "$OLD" >> "$WORK/old"
    fi
    echo "round $i: old $(tail -1 "$WORK/old") new $(tail -1 "$WORK/new")" >&2
done
echo "${TEST^^} with a peer, $R rounds (-c 100 -P 16 -n $N -r 100000)"
echo "old: CPU us/write median $(awk '{print $1}' "$WORK/old" | median), writes/s $(awk '{print $2}' "$WORK/old" | median)"
echo "new: CPU us/write median $(awk '{print $1}' "$WORK/new" | median), writes/s $(awk '{print $2}' "$WORK/new" | median)"
paste "$WORK/old" "$WORK/new" | awk '{print $4 / $1}' | sort -g \
    | awk '{r[NR] = $1} END {printf "new/old CPU per write: median %.3f (low %.3f, high %.3f)\n", r[int((NR + 1) / 2)], r[1], r[NR]}'
echo "B (applying): old CPU us/write median $(awk '{print $3}' "$WORK/old" | median), new $(awk '{print $3}' "$WORK/new" | median)"
paste "$WORK/old" "$WORK/new" | awk '{print $6 / $3}' | sort -g \
    | awk '{r[NR] = $1} END {printf "B new/old CPU per write: median %.3f (low %.3f, high %.3f)\n", r[int((NR + 1) / 2)], r[1], r[NR]}'
machine
