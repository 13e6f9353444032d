#!/usr/bin/env bash
# A peer stopped while its partner takes a steady write load (#16): does it
# resume without a state transfer once it is back, and how long does it take?
#
#   bench/outage.sh                          # 10 minutes of outage
#   OUTAGE=60 RATE=10000 SIZE=100 bench/outage.sh
#
# Two nodes with appendonly yes (everysec) on loopback, A on CPU 0, B on CPU 1.
# B is stopped (SIGKILL); a load generator writes RATE SETs a second of SIZE-byte
# values to A (over 1,000,000 keys) for OUTAGE seconds; B is started again from
# its dir, and `WAIT 1` on A measures how long B takes to hold every write.
# Reports A's counters for its link to B (state_transfers, from_log), the log
# A kept for B (repl_log_bytes at its largest) and the catch-up time.
set -euo pipefail
cd "$(dirname "$0")/.."

OUTAGE=${OUTAGE:-600}
RATE=${RATE:-10000}
SIZE=${SIZE:-100}

source bench/common.sh
ensure_tools "redis-cli" "redis-tools"
cargo build --release -q


info_field() { # info_field PORT NAME
    redis-cli -p "$1" INFO replication | tr -d '\r' | awk -F: -v n="$2" '$1 == n {print $2; exit}'
}

machine
echo "outage: ${OUTAGE}s at $RATE SET/s of $SIZE-byte values, appendonly yes"
pa=$(free_repl_port); pb=$(free_repl_port)
mkdir -p "$WORK/a" "$WORK/b"
start 0 "$pa" --masterauth bench --replicaof 127.0.0.1 "$pb" --appendonly yes --dir "$WORK/a"; a=$STARTED
start 1 "$pb" --masterauth bench --replicaof 127.0.0.1 "$pa" --appendonly yes --dir "$WORK/b"; b=$STARTED
redis-cli -p "$pa" SET warm 1 >/dev/null
redis-cli -p "$pa" WAIT 1 10000 >/dev/null
sleep 1
kill -9 "$b"

# A steady load: every 10 ms a pipeline of RATE/100 SETs, its replies read.
python3 - "$pa" "$OUTAGE" "$RATE" "$SIZE" <<'PY' &
import socket, sys, time, random
port, secs, rate, size = (int(a) for a in sys.argv[1:])
s = socket.create_connection(("127.0.0.1", port))
value = b"v" * size
per_tick = max(1, rate // 100)
start = time.monotonic()
tick = 0
sent = 0
while time.monotonic() - start < secs:
    buf = bytearray()
    for _ in range(per_tick):
        key = b"key:%d" % random.randrange(1_000_000)
        buf += b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(key), key, size, value)
    s.sendall(buf)
    need = per_tick * 5  # "+OK\r\n"
    got = 0
    while got < need:
        got += len(s.recv(1 << 20))
    sent += per_tick
    tick += 1
    delay = start + tick * 0.01 - time.monotonic()
    if delay > 0:
        time.sleep(delay)
print(f"load: {sent} SETs in {time.monotonic() - start:.0f} s ({sent / (time.monotonic() - start):.0f}/s)", file=sys.stderr)
PY
LOAD=$!
PIDS+=("$LOAD")
kept_max=0
while kill -0 "$LOAD" 2>/dev/null; do
    kept=$(info_field "$pa" repl_log_bytes)
    [ "${kept:-0}" -gt "$kept_max" ] && kept_max=$kept
    sleep 5
done
wait "$LOAD" || true
head=$(info_field "$pa" master_repl_offset)
t0=$(date +%s%3N)
start 1 "$pb" --masterauth bench --replicaof 127.0.0.1 "$pa" --appendonly yes --dir "$WORK/b"; b=$STARTED
acked=$(redis-cli -p "$pa" WAIT 1 600000)
t1=$(date +%s%3N)
echo "writes during the outage (A's head): $head"
echo "log kept for B at its largest: $kept_max bytes ($(awk -v k="$kept_max" -v n="$head" 'BEGIN {printf "%.0f", k / (n > 0 ? n : 1)}') per write)"
echo "B restarted and caught up (WAIT 1 = $acked) in $((t1 - t0)) ms (start included)"
echo "A's link to B: state_transfers=$(peer_field "$pa" state_transfers) from_log=$(peer_field "$pa" from_log)"
stop "$a"; stop "$b"
