#!/usr/bin/env bash
# A resync that ships only what differs (#16): node B holds KEYS keys, misses
# 1% of A's writes beyond any backlog, and gets a transfer of the leaves whose
# digests differ; against a fresh node C that gets everything.
#
#   bench/resync.sh                     # 1,000,000 keys, about 2 minutes
#   KEYS=200000 CHANGED=2000 bench/resync.sh
#
# Two nodes on loopback (A on CPU 0, B on CPU 1), in memory, repl-backlog-size
# 16kb so the outage outruns the backlog. KEYS SETs of 100-byte values loaded
# with redis-cli --pipe; A stops sending to B (REPLICAOF REMOVE), overwrites
# CHANGED of the keys, starts again; WAIT 1 on A marks the end. Then node C
# starts empty and gets A's whole state. Reports A's per-peer transfer_keys and
# transfer_bytes and the time to WAIT's return for both.
set -euo pipefail
cd "$(dirname "$0")/.."

KEYS=${KEYS:-1000000}
CHANGED=${CHANGED:-$((KEYS / 100))}

source bench/common.sh
ensure_tools "redis-cli" "redis-tools"
cargo build --release -q

peer_of() { # peer_of PORT PEER_PORT NAME: a counter of PORT's link to PEER_PORT
    redis-cli -p "$1" INFO replication | tr -d '\r' | grep "addr=127.0.0.1:$(($2 + 10000))," \
        | tr ',' '\n' | awk -F= -v n="$3" '$1 == n {print $2; exit}'
}
sets() { # sets FIRST COUNT VALUE_CHAR: RESP for SET key:i <100 bytes>
    python3 - "$@" <<'PY'
import sys
first, count, ch = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3].encode()
v = ch * 100
out = sys.stdout.buffer
for i in range(first, first + count):
    k = b"key:%d" % i
    out.write(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$100\r\n%s\r\n" % (len(k), k, v))
PY
}

machine
echo "resync: $KEYS keys of 100 bytes, $CHANGED overwritten while A does not send to B"
pa=$(free_repl_port); pb=$(free_repl_port); pc=$(free_repl_port)
small=(--masterauth bench --repl-backlog-size 16kb)
start 0 "$pa" --replicaof 127.0.0.1 "$pb" "${small[@]}"; a=$STARTED
start 1 "$pb" --replicaof 127.0.0.1 "$pa" "${small[@]}"; b=$STARTED
sets 0 "$KEYS" a | redis-cli -p "$pa" --pipe >/dev/null
redis-cli -p "$pa" WAIT 1 120000 >/dev/null
echo "B holds $(redis-cli -p "$pb" DBSIZE) keys"
redis-cli -p "$pa" REPLICAOF REMOVE 127.0.0.1 "$pb" >/dev/null
sets $((KEYS / 3)) "$CHANGED" b | redis-cli -p "$pa" --pipe >/dev/null
t0=$(now_ms)
redis-cli -p "$pa" REPLICAOF 127.0.0.1 "$pb" >/dev/null
redis-cli -p "$pa" WAIT 1 600000 >/dev/null
t1=$(now_ms)
printf '%-22s %10s %14s %10s\n' case keys_shipped bytes_shipped ms
printf '%-22s %10s %14s %10s\n' "B, 1% differs" "$(peer_of "$pa" "$pb" transfer_keys)" "$(peer_of "$pa" "$pb" transfer_bytes)" $((t1 - t0))
t0=$(now_ms)
start 1 "$pc" --replicaof 127.0.0.1 "$pa" "${small[@]}"; c=$STARTED
redis-cli -p "$pa" REPLICAOF 127.0.0.1 "$pc" >/dev/null
redis-cli -p "$pa" WAIT 2 600000 >/dev/null
t1=$(now_ms)
printf '%-22s %10s %14s %10s\n' "C, empty (everything)" "$(peer_of "$pa" "$pc" transfer_keys)" "$(peer_of "$pa" "$pc" transfer_bytes)" $((t1 - t0))
[ "$(redis-cli -p "$pb" GET "key:$((KEYS / 3))")" = "$(redis-cli -p "$pa" GET "key:$((KEYS / 3))")" ] || echo "B differs from A!" >&2
