#!/usr/bin/env bash
# User-space instructions a write costs on a node that replicates it, and on the node that
# applies it, counted by valgrind's callgrind: exact where this VM's timings drift by 2x.
#
#   bench/replication_instructions.sh                                   # HSET, N=100000
#   bench/replication_instructions.sh "SET key:__rand_int__ v"
#   SIDE=receiver bench/replication_instructions.sh                     # count node B instead
#   CHORUS=/tmp/old/chorus CHORUS_BUILT=1 bench/replication_instructions.sh
#   KEEP=/tmp/cg bench/replication_instructions.sh                      # keep both callgrind files
#   STANDALONE=1 ARGS="--appendonly yes --appendfsync everysec" bench/replication_instructions.sh \
#       "SET key:__rand_int__ v"                                        # what the delta log costs
#
# Two chorus nodes replicate to each other on loopback (one server thread each); the counted
# one runs under callgrind, the other natively. redis-benchmark sends 50,000 of the command
# (-c 50 -P 16 -r $R, default 100000) to node A, then, in a second run of both nodes, 50,000 and a further
# $N; A's `WAIT 1` makes B apply everything before the counted node stops. The difference of
# the two totals over $N is one write in the steady state, start-up and shutdown cancelled
# out. STANDALONE=1 counts a node without a peer, for comparison. Kernel time (socket calls,
# UDP) is not counted.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-100000}
# Keys (or elements) drawn from 0..R.
R=${R:-100000}
SIDE=${SIDE:-writer}
CHORUS=${CHORUS:-target/release/chorus}
COMMAND=${1:-HSET myhash element:__rand_int__ v}

source bench/common.sh
ensure_tools "redis-benchmark redis-cli valgrind" "redis-tools valgrind"
[ -n "${CHORUS_BUILT:-}" ] || cargo build --release -q

# total N: callgrind's instruction total for the counted node after 50,000 + N writes.
total() {
    local n=$1 pa pb out="$WORK/callgrind.out" counted other
    pa=$(free_repl_port); pb=$(free_repl_port)
    rm -f "$out"
    local cg=(valgrind --tool=callgrind --callgrind-out-file="$out")
    local a=("$CHORUS" server --port "$pa" --server-threads 1)
    # ARGS go to node A, each run in a fresh --dir (a log from the first run would be replayed).
    if [ -n "${ARGS:-}" ]; then
        local extra; read -ra extra <<< "$ARGS"
        rm -rf "$WORK/dir"; mkdir -p "$WORK/dir"
        a+=("${extra[@]}" --dir "$WORK/dir")
    fi
    local b=("$CHORUS" server --port "$pb" --server-threads 1 --masterauth bench --replicaof 127.0.0.1 "$pa")
    [ -n "${STANDALONE:-}" ] || a+=(--masterauth bench --replicaof 127.0.0.1 "$pb")
    if [ "$SIDE" = receiver ]; then
        "${a[@]}" >/dev/null 2>&1 & other=$!
        "${cg[@]}" "${b[@]}" >/dev/null 2>&1 & counted=$!
    else
        "${cg[@]}" "${a[@]}" >/dev/null 2>&1 & counted=$!
        if [ -z "${STANDALONE:-}" ]; then "${b[@]}" >/dev/null 2>&1 & other=$!; else other=""; fi
    fi
    PIDS+=("$counted" ${other:+"$other"})
    for _ in $(seq 1 300); do
        redis-cli -p "$pa" PING >/dev/null 2>&1 && { [ -n "${STANDALONE:-}" ] || redis-cli -p "$pb" PING >/dev/null 2>&1; } && break
        sleep 0.2
    done
    sleep 3
    # shellcheck disable=SC2086
    redis-benchmark -p "$pa" -c 50 -P 16 -n 50000 -r "$R" -q $COMMAND >/dev/null 2>&1
    # shellcheck disable=SC2086
    [ "$n" -gt 0 ] && redis-benchmark -p "$pa" -c 50 -P 16 -n "$n" -r "$R" -q $COMMAND >/dev/null 2>&1
    [ -n "${STANDALONE:-}" ] || redis-cli -p "$pa" WAIT 1 120000 >/dev/null
    kill -INT "$counted"
    for _ in $(seq 1 600); do kill -0 "$counted" 2>/dev/null || break; sleep 0.1; done
    [ -z "$other" ] || stop "$other"
    [ -z "${KEEP:-}" ] || cp "$out" "$KEEP/callgrind.$SIDE.$n"
    awk '/^(summary|totals):/ {print $2; exit}' "$out"
}

echo "counting the ${STANDALONE:+standalone }$SIDE: $COMMAND, N=$N" >&2
t0=$(total 0)
t1=$(total "$N")
echo "instructions per write: $(( (t1 - t0) / N ))"
machine
