#!/usr/bin/env bash
# User-space instructions a request costs, Chorus vs redis-server, counted by valgrind's
# callgrind: exact and repeatable where this VM's timings drift by 25% (#13).
#
#   bench/instructions.sh                                  # the default commands
#   bench/instructions.sh "INCR counter:__rand_int__"      # one command
#   CHORUS=/tmp/old/chorus bench/instructions.sh           # another build
#
# Each server runs under callgrind (one Chorus server thread). redis-benchmark first sends
# 100,000 of the command (-r 100000: the keys, fields and members it writes), then the server
# runs again with a further $N: the difference of the two totals over $N is the cost of one
# request in the steady state, start-up and shutdown cancelled out. Kernel time (the
# socket calls, about a quarter of a request's time here) is not counted; both servers make
# the same calls (one read and one write per pipeline of 16).
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-200000}
CHORUS=${CHORUS:-target/release/chorus}

source bench/common.sh
ensure_tools "redis-server redis-benchmark redis-cli valgrind" "redis-server redis-tools valgrind"
[ -n "${CHORUS_BUILT:-}" ] || cargo build --release -q

if [ $# -eq 0 ]; then
    set -- "SET key:__rand_int__ v" "GET key:__rand_int__" "INCR counter:__rand_int__" \
        "HSET myhash element:__rand_int__ v" "HGET myhash element:__rand_int__" \
        "HINCRBY counters field:__rand_int__ 1" "SADD myset element:__rand_int__" \
        "SISMEMBER myset element:__rand_int__" "ZADD lb __rand_int__ element:__rand_int__" \
        "ZSCORE lb element:__rand_int__"
fi

# The command that fills what a read command reads.
writer_of() {
    case $1 in
        GET*) echo "SET key:__rand_int__ v" ;;
        HGET*) echo "HSET myhash element:__rand_int__ v" ;;
        SISMEMBER*) echo "SADD myset element:__rand_int__" ;;
        ZSCORE*) echo "ZADD lb __rand_int__ element:__rand_int__" ;;
        *) echo "$1" ;;
    esac
}

# total SERVER N COMMAND: callgrind's instruction total for a server that served 100,000
# of COMMAND's writer, then N of COMMAND.
total() {
    local server=$1 n=$2 command=$3 port pid out="$WORK/callgrind.out"
    port=$(free_port)
    case $server in
        redis) valgrind --tool=callgrind --callgrind-out-file="$out" redis-server --port "$port" \
                   --bind 127.0.0.1 --save "" --appendonly no >/dev/null 2>&1 & ;;
        chorus) valgrind --tool=callgrind --callgrind-out-file="$out" "$CHORUS" server \
                    --port "$port" --server-threads 1 >/dev/null 2>&1 & ;;
    esac
    pid=$!
    PIDS+=("$pid")
    for _ in $(seq 1 300); do
        redis-cli -p "$port" PING >/dev/null 2>&1 && break
        sleep 0.2
    done
    read -ra w <<< "$(writer_of "$command")"
    redis-benchmark -p "$port" -c 50 -P 16 -n 100000 -r 100000 -q "${w[@]}" >/dev/null 2>&1
    if [ "$n" -gt 0 ]; then
        read -ra c <<< "$command"
        redis-benchmark -p "$port" -c 50 -P 16 -n "$n" -r 100000 -q "${c[@]}" >/dev/null 2>&1
    fi
    kill -INT "$pid"
    wait "$pid" 2>/dev/null || true
    awk '/^(summary|totals):/ {print $2; exit}' "$out"
}

echo "User-space instructions per request (callgrind; -c 50 -P 16 -r 100000; steady state over $N requests)"
printf '%-42s %10s %10s %8s\n' command redis chorus ratio
for command in "$@"; do
    r=$(( ($(total redis "$N" "$command") - $(total redis 0 "$command")) / N ))
    c=$(( ($(total chorus "$N" "$command") - $(total chorus 0 "$command")) / N ))
    awk -v t="$command" -v r="$r" -v c="$c" 'BEGIN {printf "%-42s %10d %10d %8.2f\n", t, r, c, c / r}'
done
machine
