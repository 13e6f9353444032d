#!/usr/bin/env bash
# Two Chorus builds in paired runs: an A/B that this noisy VM can resolve.
#
#   bench/paired.sh OLD_BINARY NEW_BINARY
#   bench/paired.sh redis target/release/chorus   # against redis-server, paired the same way
#   PAIRS=81 TESTS=set,get,incr bench/paired.sh /tmp/old-target/release/chorus target/release/chorus
#   TESTS="incr,HGET myhash element:__rand_int__" bench/paired.sh ...   # tests or whole commands
#   NEW_ARGS="--appendonly yes --appendfsync everysec" TESTS=set,incr \
#       bench/paired.sh target/release/chorus target/release/chorus   # what the log costs
#   PIPE=1 N=50000 ...                       # requests per pipeline (default 16)
#   THREADS=2 ...                            # chorus's default here: a server thread per CPU,
#                                            # servers and redis-benchmark on every CPU
#
# bench/ab.sh restarts the servers every round, so minutes pass between an old and a new
# figure, and this machine's speed drifts by 25% over minutes. Here both servers stay up
# (each pinned to CPU 0, one server thread, unless THREADS says otherwise; only the one
# under load uses it) and each test runs as $PAIRS pairs of short runs (-n $N, about half a
# second), old and new back to back, the order swapped every pair. A pair's ratio sees the
# same machine; the median of the ratios is the result. Keys are written once before the
# pairs (SET over -r 100000), so that reads find them. OLD_ARGS and NEW_ARGS are added to
# each server's command line; a server given `--appendonly yes` gets a fresh `--dir`.
set -euo pipefail
cd "$(dirname "$0")/.."

OLD=${1:?old binary}
NEW=${2:?new binary}
PAIRS=${PAIRS:-41}
N=${N:-300000}
TESTS=${TESTS:-set,get,incr}
PIPE=${PIPE:-16}
OLD_ARGS=${OLD_ARGS:-}
NEW_ARGS=${NEW_ARGS:-}
THREADS=${THREADS:-1}
# One server thread: the server on CPU 0, the client on CPU 1. More: both anywhere.
if [ "$THREADS" = 1 ]; then SERVER_CPUS=0; CLIENT_CPUS=1; else SERVER_CPUS=0-63; CLIENT_CPUS=0-63; fi

source bench/common.sh
ensure_tools "redis-server redis-benchmark redis-cli" "redis-server redis-tools"

start() { # start BINARY ARGS -> port
    local port args; port=$(free_port)
    if [ "$1" = redis ]; then
        taskset -c "$SERVER_CPUS" redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
            --daemonize no --logfile /dev/null $2 >/dev/null 2>&1 &
        echo "$!" >> "$WORK/pids"
        wait_ready "$port"
        echo "$port"
        return
    fi
    read -ra args <<< "$2"
    case " $2 " in
        *" --appendonly yes "*) mkdir -p "$WORK/dir-$port"; args+=(--dir "$WORK/dir-$port") ;;
    esac
    taskset -c "$SERVER_CPUS" "$1" server --port "$port" --server-threads "$THREADS" "${args[@]}" >/dev/null 2>&1 &
    echo "$!" >> "$WORK/pids"
    wait_ready "$port"
    echo "$port"
}
rps() { # rps PORT TEST: TEST is a redis-benchmark test name (incr) or a command (INCR k:__rand_int__)
    # (The last figure: lrange_100 runs the LPUSH that fills its list first.)
    local what
    if [[ "$2" == *" "* ]]; then read -ra what <<< "$2"; else what=(-t "$2"); fi
    taskset -c "$CLIENT_CPUS" redis-benchmark -p "$1" -c 50 -P "$PIPE" -n "$N" -r "${R:-100000}" --csv "${what[@]}" 2>/dev/null \
        | awk -F'","' 'NR>1 {gsub(/"/,"",$2); print $2}' | tail -1
}

# `start` runs in a command substitution, a subshell whose PIDS the EXIT trap never sees: the
# servers' pids go through a file instead.
trap 'kill $(cat "$WORK/pids" 2>/dev/null) 2>/dev/null; cleanup' EXIT
old=$(start "$OLD" "$OLD_ARGS")
new=$(start "$NEW" "$NEW_ARGS")
for port in "$old" "$new"; do rps "$port" set >/dev/null; done

if [ "$THREADS" = 1 ]; then WHERE="servers on CPU 0, client on CPU 1"; else WHERE="$THREADS server threads, servers and client on every CPU"; fi
echo "new/old, median of $PAIRS paired runs (-n $N -r 100000 -c 50 -P $PIPE; $WHERE)"
printf '%-8s %8s %8s %8s %14s %14s\n' test median low high old-median new-median
IFS=',' read -ra tests <<< "$TESTS"
for t in "${tests[@]}"; do
    f="$WORK/pairs"
    : > "$f"
    for i in $(seq 1 "$PAIRS"); do
        if [ $((i % 2)) = 0 ]; then
            o=$(rps "$old" "$t"); n=$(rps "$new" "$t")
        else
            n=$(rps "$new" "$t"); o=$(rps "$old" "$t")
        fi
        echo "$o $n" >> "$f"
    done
    ratio=$(awk '{print $2 / $1}' "$f" | sort -g)
    o=$(awk '{print $1}' "$f" | median)
    n=$(awk '{print $2}' "$f" | median)
    echo "$ratio" | awk -v t="$t" -v o="$o" -v n="$n" '{r[NR] = $1}
        END {printf "%-8s %8.3f %8.3f %8.3f %14.0f %14.0f\n", t, r[int((NR + 1) / 2)], r[1], r[NR], o, n}'
done
machine
