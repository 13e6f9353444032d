#!/usr/bin/env bash
# Two Chorus builds in paired runs: an A/B that this noisy VM can resolve.
#
#   bench/paired.sh OLD_BINARY NEW_BINARY
#   PAIRS=81 TESTS=set,get,incr bench/paired.sh /tmp/old-target/release/chorus target/release/chorus
#   NEW_ARGS="--appendonly yes --appendfsync everysec" TESTS=set,incr \
#       bench/paired.sh target/release/chorus target/release/chorus   # what the log costs
#
# bench/ab.sh restarts the servers every round, so minutes pass between an old and a new
# figure, and this machine's speed drifts by 25% over minutes. Here both servers stay up
# (each pinned to CPU 0, one server thread; only the one under load uses it) and each test
# runs as $PAIRS pairs of short runs (-n $N, about half a second), old and new back to back,
# the order swapped every pair. A pair's ratio sees the same machine; the median of the
# ratios is the result. Keys are written once before the pairs (SET over -r 100000), so that
# reads find them. OLD_ARGS and NEW_ARGS are added to each server's command line; a server
# given `--appendonly yes` gets a fresh `--dir`.
set -euo pipefail
cd "$(dirname "$0")/.."

OLD=${1:?old binary}
NEW=${2:?new binary}
PAIRS=${PAIRS:-41}
N=${N:-300000}
TESTS=${TESTS:-set,get,incr}
OLD_ARGS=${OLD_ARGS:-}
NEW_ARGS=${NEW_ARGS:-}

source bench/common.sh
ensure_tools "redis-benchmark redis-cli" "redis-tools"

start() { # start BINARY ARGS -> port
    local port args; port=$(free_port)
    read -ra args <<< "$2"
    case " $2 " in
        *" --appendonly yes "*) mkdir -p "$WORK/dir-$port"; args+=(--dir "$WORK/dir-$port") ;;
    esac
    taskset -c 0 "$1" server --port "$port" --server-threads 1 "${args[@]}" >/dev/null 2>&1 &
    PIDS+=($!)
    wait_ready "$port"
    echo "$port"
}
rps() { # rps PORT TEST
    taskset -c 1 redis-benchmark -p "$1" -c 50 -P 16 -n "$N" -r 100000 -t "$2" --csv 2>/dev/null \
        | awk -F'","' 'NR>1 {gsub(/"/,"",$2); print $2}'
}

old=$(start "$OLD" "$OLD_ARGS")
new=$(start "$NEW" "$NEW_ARGS")
for port in "$old" "$new"; do rps "$port" set >/dev/null; done

echo "new/old, median of $PAIRS paired runs (-n $N -r 100000 -c 50 -P 16; servers on CPU 0, client on CPU 1)"
printf '%-8s %8s %8s %8s %14s %14s\n' test median low high old-median new-median
IFS=',' read -ra tests <<< "$TESTS"
for t in "${tests[@]}"; do
    : > "$WORK/$t"
    for i in $(seq 1 "$PAIRS"); do
        if [ $((i % 2)) = 0 ]; then
            o=$(rps "$old" "$t"); n=$(rps "$new" "$t")
        else
            n=$(rps "$new" "$t"); o=$(rps "$old" "$t")
        fi
        echo "$o $n" >> "$WORK/$t"
    done
    ratio=$(awk '{print $2 / $1}' "$WORK/$t" | sort -g)
    o=$(awk '{print $1}' "$WORK/$t" | median)
    n=$(awk '{print $2}' "$WORK/$t" | median)
    echo "$ratio" | awk -v t="$t" -v o="$o" -v n="$n" '{r[NR] = $1}
        END {printf "%-8s %8.3f %8.3f %8.3f %14.0f %14.0f\n", t, r[int((NR + 1) / 2)], r[1], r[NR], o, n}'
done
machine
