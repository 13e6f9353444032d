#!/usr/bin/env bash
# Two Chorus builds side by side (an A/B of one change), in one run.
#
#   bench/ab.sh OLD_BINARY NEW_BINARY
#   ROUNDS=5 TESTS=sadd,hset bench/ab.sh /tmp/old/chorus target/release/chorus
#   APPENDFSYNC=everysec TESTS=set,incr READS= bench/ab.sh OLD NEW   # both with appendonly yes
#
# Build the old one from a worktree, e.g.
#   git worktree add /tmp/old HEAD~1 && (cd /tmp/old && CARGO_TARGET_DIR=/tmp/old-target cargo build --release)
# Each build is started fresh per round (pinned to CPU 0, one server thread), redis-benchmark
# runs on CPU 1 (-c 50 -P 16 -n $N -r 100000): its own tests $TESTS, then the read commands in
# $READS on the elements those tests wrote. Builds alternate over $ROUNDS rounds; medians.
set -euo pipefail
cd "$(dirname "$0")/.."

OLD=${1:?old binary}
NEW=${2:?new binary}
N=${N:-1000000}
ROUNDS=${ROUNDS:-3}
TESTS=${TESTS:-sadd,hset,zadd}
APPENDFSYNC=${APPENDFSYNC:-}
READS=${READS-"HGET myhash element:__rand_int__;SISMEMBER myset element:__rand_int__;ZSCORE myzset element:__rand_int__"}

source bench/common.sh
ensure_tools "redis-benchmark redis-cli" "redis-tools"

RESULTS="$WORK/results"
: > "$RESULTS"
for round in $(seq 1 "$ROUNDS"); do
    for build in old new; do
        bin=$OLD
        [ "$build" = new ] && bin=$NEW
        port=$(free_port)
        args=()
        if [ -n "$APPENDFSYNC" ]; then
            dir="$WORK/$build-$round"; mkdir -p "$dir"
            args=(--appendonly yes --appendfsync "$APPENDFSYNC" --dir "$dir")
        fi
        taskset -c 0 "$bin" server --port "$port" --server-threads 1 "${args[@]}" >/dev/null 2>&1 &
        pid=$!
        PIDS+=("$pid")
        wait_ready "$port"
        taskset -c 1 redis-benchmark -p "$port" -c 50 -P 16 -n "$N" -r 100000 -t "$TESTS" --csv 2>/dev/null \
            | awk -F'","' -v b="$build" 'NR>1 {gsub(/"/,"",$1); gsub(/"/,"",$2); print b, $1, $2}' >> "$RESULTS"
        IFS=';' read -ra reads <<< "$READS"
        for cmd in "${reads[@]}"; do
            # shellcheck disable=SC2086
            rps=$(taskset -c 1 redis-benchmark -p "$port" -c 50 -P 16 -n "$N" -r 100000 --csv $cmd 2>/dev/null \
                | awk -F'","' 'NR>1 {gsub(/"/,"",$2); print $2}')
            echo "$build ${cmd%% *} $rps" >> "$RESULTS"
        done
        stop "$pid"
        echo "round $round: $build done" >&2
    done
done

[ -n "${RAW:-}" ] && sort -k2,2 -k1,1 -s "$RESULTS" >&2
echo "ops/s, median of $ROUNDS rounds (-n $N -r 100000 -c 50 -P 16; server on CPU 0, client on CPU 1${APPENDFSYNC:+; appendonly yes, appendfsync $APPENDFSYNC})"
printf '%-12s %12s %12s %8s\n' test old new change
for t in $(awk '{print $2}' "$RESULTS" | awk '!seen[$0]++'); do
    o=$(median_of old "$t")
    n=$(median_of new "$t")
    awk -v t="$t" -v o="$o" -v n="$n" 'BEGIN {printf "%-12s %12.0f %12.0f %+7.0f%%\n", t, o, n, (n / o - 1) * 100}'
done
machine
