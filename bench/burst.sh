#!/usr/bin/env bash
# A burst of large writes past the replication backlog, two chorus nodes on
# loopback (#16): does the peer catch up without a state transfer, and how
# long after the burst does WAIT 1 return?
#
#   bench/burst.sh                     # about a minute
#   N=200000 SIZE=1024 ROUNDS=3 bench/burst.sh
#
# Per mode (in memory: appendonly no; with the delta log: appendonly yes,
# everysec), per round: node A on CPU 0, node B and redis-benchmark on CPU 1;
# redis-benchmark -t set -c 50 -P 16 -n $N -d $SIZE -r 100000 against A (the
# burst), then `WAIT 1 120000` on A. Reports the burst's duration, WAIT's, the
# ratio, and A's counters for its link to B (state_transfers, from_log).
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-200000}
SIZE=${SIZE:-1024}
ROUNDS=${ROUNDS:-3}

source bench/common.sh
ensure_tools "redis-benchmark redis-cli" "redis-tools"
cargo build --release -q




machine
echo "burst: $N SETs of $SIZE bytes, -c 50 -P 16, $ROUNDS rounds per mode"
printf '%-10s %5s %9s %9s %7s %16s %9s\n' mode round burst_ms wait_ms ratio state_transfers from_log
for mode in memory log; do
    for round in $(seq 1 "$ROUNDS"); do
        pa=$(free_repl_port); pb=$(free_repl_port)
        extra_a=(); extra_b=()
        if [ "$mode" = log ]; then
            mkdir -p "$WORK/a$round" "$WORK/b$round"
            extra_a=(--appendonly yes --dir "$WORK/a$round")
            extra_b=(--appendonly yes --dir "$WORK/b$round")
        fi
        start 0 "$pa" --masterauth bench --replicaof 127.0.0.1 "$pb" "${extra_a[@]}"; a=$STARTED
        start 1 "$pb" --masterauth bench --replicaof 127.0.0.1 "$pa" "${extra_b[@]}"; b=$STARTED
        redis-cli -p "$pa" SET warm 1 >/dev/null
        redis-cli -p "$pa" WAIT 1 10000 >/dev/null
        t0=$(now_ms)
        taskset -c 1 redis-benchmark -p "$pa" -c 50 -P 16 -n "$N" -d "$SIZE" -r 100000 -t set -q >/dev/null 2>&1
        t1=$(now_ms)
        acked=$(redis-cli -p "$pa" WAIT 1 120000)
        t2=$(now_ms)
        [ "$acked" = 1 ] || echo "round $round ($mode): WAIT timed out" >&2
        printf '%-10s %5s %9s %9s %7.2f %16s %9s\n' "$mode" "$round" $((t1 - t0)) $((t2 - t1)) \
            "$(awk -v w=$((t2 - t1)) -v b=$((t1 - t0)) 'BEGIN {print w / b}')" \
            "$(peer_field "$pa" state_transfers)" "$(peer_field "$pa" from_log)"
        stop "$a"; stop "$b"
    done
done
