#!/usr/bin/env bash
# A standalone node's CPU time per request, two builds (or one build with two sets of
# arguments) side by side, alternated round by round.
#
#   bench/cpu_ab.sh OLD_BINARY NEW_BINARY
#   T=set ARGS="--appendonly yes --appendfsync everysec" bench/cpu_ab.sh OLD NEW   # both logging
#   T=incr NEW_ARGS="--appendonly yes --appendfsync everysec" bench/cpu_ab.sh B B  # what the log costs
#
# Throughput at -P 16 (bench/paired.sh) moves with the client: redis-benchmark's one thread
# leaves a fast node idle a fifth of the time, which hides part of what a change costs or
# saves. Here chorus-loadgen (-c 100 -P 16 -r 100000, on CPU 1) keeps the node (one server
# thread, on CPU 0) busy, and the node's own CPU time over $N requests, from the run times
# of its threads in /proc (to the nanosecond), is the figure. Each round starts each node
# fresh in its own data directory and warms it with 300,000 requests first. Prints each
# side's median and the median of the rounds' new/old ratios.
set -euo pipefail
cd "$(dirname "$0")/.."

OLD=${1:?old binary}
NEW=${2:?new binary}
R=${R:-21}
N=${N:-1000000}
T=${T:-set}
OLD_ARGS=${OLD_ARGS-${ARGS:-}}
NEW_ARGS=${NEW_ARGS-${ARGS:-}}

source bench/common.sh
ensure_tools "redis-cli" "redis-tools"
cargo build --release -q -p chorus-loadgen

# one BINARY ARGS: prints "cpu_us_per_request requests_per_s"
one() {
    local bin=$1 port pid c0 c1 rps args
    read -ra args <<< "$2"
    port=$(free_port)
    rm -rf "$WORK/dir"; mkdir -p "$WORK/dir"
    taskset -c 0 "$bin" server --port "$port" --server-threads 1 --dir "$WORK/dir" "${args[@]}" \
        >/dev/null 2>>"$WORK/chorus.log" &
    pid=$!
    PIDS+=("$pid")
    wait_ready "$port"
    taskset -c 1 ./target/release/chorus-loadgen -p "$port" -c 100 -P 16 -n 300000 -r 100000 -t "$T" >/dev/null
    c0=$(cpu_s "$pid")
    rps=$(taskset -c 1 ./target/release/chorus-loadgen -p "$port" -c 100 -P 16 -n "$N" -r 100000 -t "$T" \
        | awk -F'","' '{gsub(/"/,"",$2); print $2}')
    c1=$(cpu_s "$pid")
    stop "$pid"
    awk -v a="$c0" -v b="$c1" -v n="$N" -v r="$rps" 'BEGIN {printf "%.4f %.0f\n", (b - a) * 1e6 / n, r}'
}

: > "$WORK/old"; : > "$WORK/new"
for i in $(seq 1 "$R"); do
    if [ $((i % 2)) = 0 ]; then
        one "$OLD" "$OLD_ARGS" >> "$WORK/old"; one "$NEW" "$NEW_ARGS" >> "$WORK/new"
    else
        one "$NEW" "$NEW_ARGS" >> "$WORK/new"; one "$OLD" "$OLD_ARGS" >> "$WORK/old"
    fi
    echo "round $i: old $(tail -1 "$WORK/old") new $(tail -1 "$WORK/new")" >&2
done
echo "${T^^}, $R rounds (chorus-loadgen -c 100 -P 16 -n $N -r 100000; old: '$OLD_ARGS', new: '$NEW_ARGS')"
echo "old: CPU us/request median $(awk '{print $1}' "$WORK/old" | median), requests/s $(awk '{print $2}' "$WORK/old" | median)"
echo "new: CPU us/request median $(awk '{print $1}' "$WORK/new" | median), requests/s $(awk '{print $2}' "$WORK/new" | median)"
for col in 1 2; do
    what=$([ "$col" = 1 ] && echo "CPU per request" || echo "requests/s")
    paste "$WORK/old" "$WORK/new" | awk -v c="$col" '{print $(c + 2) / $c}' | sort -g \
        | awk -v w="$what" '{r[NR] = $1} END {printf "new/old %s: median %.3f (low %.3f, high %.3f)\n", w, r[int((NR + 1) / 2)], r[1], r[NR]}'
done
machine
