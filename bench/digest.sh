#!/usr/bin/env bash
# What a keyspace digest costs (the repair offers of docs/architecture.md, "Repair").
#
#   bench/digest.sh                  # about 2 minutes
#   KEYS=2000000 bench/digest.sh
#   CHORUS=/tmp/chorus-old bench/digest.sh   # another build of the server
#
# 1. Cost: a standalone node (CPU 0) holding about 0.86 * $KEYS three-field hashes
#    (redis-benchmark's random keys over $KEYS) digests its whole keyspace three times
#    (CRDT.DIGEST RANGE 0 255); the node's CPU time for each.
# 2. Latency: two nodes replicating to each other (A on CPU 0, B at nice 19 on CPU 1)
#    with `--repl-repair-interval ${REPAIR:-1}` hold the same keys; a trickle of SETs on A
#    (every 0.5 s) makes each quiet link offer a new digest every interval, while one
#    client (-c 1 -P 1) reads HGETs from A. redis-benchmark's latency summary for those
#    reads, and A's repair counters. REPAIR=0 measures the same without offers.
set -euo pipefail
cd "$(dirname "$0")/.."

KEYS=${KEYS:-1000000}
REPAIR=${REPAIR:-1}
CHORUS=${CHORUS:-./target/release/chorus}

source bench/common.sh
ensure_tools "redis-benchmark redis-cli" "redis-tools"
[ "$CHORUS" = ./target/release/chorus ] && cargo build --release -q -p chorus

node() { # node CPU PORT [args...]
    local cpu=$1 port=$2; shift 2
    taskset -c "$cpu" "$CHORUS" server --port "$port" --server-threads 1 "$@" \
        >/dev/null 2>>"$WORK/chorus.log" &
    STARTED=$!
    PIDS+=("$STARTED")
    wait_ready "$port"
}

load() { # load PORT
    taskset -c 1 redis-benchmark -p "$1" -r "$KEYS" -n $((KEYS * 2)) -P 64 -c 50 -q \
        HSET session:__rand_int__ user alice ts 1700000000 ip 10.0.0.1 >/dev/null 2>&1
}

cpu_ms() { awk -v hz="$(getconf CLK_TCK)" '{print int(($14 + $15) * 1000 / hz)}' "/proc/$1/stat"; }

machine
p=$(free_repl_port)
node 0 "$p"; solo=$STARTED
load "$p"
echo "keys: $(redis-cli -p "$p" DBSIZE)"
for i in 1 2 3; do
    c0=$(cpu_ms "$solo")
    redis-cli -p "$p" CRDT.DIGEST RANGE 0 255 >/dev/null
    echo "digest $i: $(( $(cpu_ms "$solo") - c0 )) ms of CPU"
done
stop "$solo"

pa=$(free_repl_port); pb=$(free_repl_port)
repl=(--masterauth bench --repl-repair-interval "$REPAIR")
node 0 "$pa" "${repl[@]}" --replicaof 127.0.0.1 "$pb"; a=$STARTED
node 1 "$pb" "${repl[@]}" --replicaof 127.0.0.1 "$pa"; b=$STARTED
for t in /proc/"$b"/task/*; do renice -n 19 -p "${t##*/}" >/dev/null; done
wait_linked "$pa"
load "$pa"
# Until B has applied every write of A's (not only made every key).
until redis-cli -p "$pa" INFO replication | grep -q "lag_ops=0,"; do sleep 0.5; done
shipped() { redis-cli -p "$pb" INFO replication | tr -d '\r' | grep -E "^peer0:" | tr ',' '\n' \
    | grep -E "^(state_transfers|repairs|transfer_keys)=" | tr '\n' ' '; }
echo "B's link to A before the reads: $(shipped)"
( for i in $(seq 1 120); do redis-cli -p "$pa" SET trickle "$i" >/dev/null; sleep 0.5; done ) &
PIDS+=($!)
sleep 2
taskset -c 1 redis-benchmark -p "$pa" -c 1 -P 1 -n 100000 -r "$KEYS" HGET session:__rand_int__ user \
    | grep -A2 "latency summary"
redis-cli -p "$pa" INFO replication | tr -d '\r' | grep -E "^(repairs_asked|repair_digests_taken|repair_offers_compared|repair_offers_skipped):"
# What the repairs shipped: B's link to A (A asks, B sends).
echo "B's link to A after the reads:  $(shipped)"
