#!/usr/bin/env bash
# `chorus audit diff` on a large key space: two linked nodes load $KEYS keys, are
# separated (REPLICAOF REMOVE on both), node B changes $CHANGED of them, and the
# diff must find exactly those. Reports the diff's wall time, the bytes both nodes
# exchanged with it (INFO total_net_input_bytes/total_net_output_bytes, summed),
# and how long node A kept a PING waiting meanwhile (its longest stall).
#
#   bench/audit-diff.sh                       # 1,000,000 keys, 10 changed; about 2 minutes
#   KEYS=100000 CHANGED=3 bench/audit-diff.sh
#
# Node A runs on CPU 0, node B on CPU 1; the diff and the PING probe share them.
set -euo pipefail
cd "$(dirname "$0")/.."

KEYS=${KEYS:-1000000}
CHANGED=${CHANGED:-10}

source bench/common.sh
ensure_tools "redis-cli" "redis-tools"
cargo build --release -q



net_bytes() { # net_bytes PORT -> input + output bytes so far
    redis-cli -p "$1" INFO stats | tr -d '\r' | awk -F: '
        /^total_net_input_bytes/ {i = $2} /^total_net_output_bytes/ {o = $2} END {print i + o}'
}

pa=$(free_repl_port); pb=$(free_repl_port)
start 0 "$pa" --masterauth bench --replicaof 127.0.0.1 "$pb"
start 1 "$pb" --masterauth bench --replicaof 127.0.0.1 "$pa"

echo "loading $KEYS keys on A..." >&2
python3 - "$KEYS" <<'PY' | redis-cli -p "$pa" --pipe >/dev/null
import sys
out = sys.stdout.buffer
for i in range(int(sys.argv[1])):
    k = b"key:%d" % i
    v = b"value-%d" % i
    out.write(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(k), k, len(v), v))
PY
redis-cli -p "$pa" WAIT 1 120000 >/dev/null
for _ in $(seq 1 600); do
    [ "$(redis-cli -p "$pb" DBSIZE)" = "$KEYS" ] && break
    sleep 0.1
done
[ "$(redis-cli -p "$pb" DBSIZE)" = "$KEYS" ] || { echo "B never held the $KEYS keys" >&2; exit 1; }
./target/release/chorus audit diff "127.0.0.1:$pa" "127.0.0.1:$pb" >/dev/null \
    || { echo "the nodes differ before the test" >&2; exit 1; }

redis-cli -p "$pa" REPLICAOF REMOVE 127.0.0.1 "$pb" >/dev/null
redis-cli -p "$pb" REPLICAOF REMOVE 127.0.0.1 "$pa" >/dev/null
python3 - "$KEYS" "$CHANGED" <<'PY' > "$WORK/changed"
import random, sys
keys, n = int(sys.argv[1]), int(sys.argv[2])
for i in sorted(random.Random(12).sample(range(keys), n)):
    print("key:%d" % i)
PY
while read -r k; do redis-cli -p "$pb" SET "$k" changed-on-b >/dev/null; done < "$WORK/changed"

before=$(( $(net_bytes "$pa") + $(net_bytes "$pb") ))
t0=$(date +%s.%N)
set +e
./target/release/chorus audit diff "127.0.0.1:$pa" "127.0.0.1:$pb" --json > "$WORK/diff"
code=$?
set -e
t1=$(date +%s.%N)
after=$(( $(net_bytes "$pa") + $(net_bytes "$pb") ))
# The INFO asked between the two readings, measured the same way.
idle=$(( $(net_bytes "$pa") + $(net_bytes "$pb") - after ))

# Again with a PING every millisecond on A: its longest wait.
python3 - "$pa" "$WORK/stop_probe" > "$WORK/stall" <<'PY' &
import os, socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
worst, n = 0.0, 0
while not os.path.exists(sys.argv[2]):
    t = time.perf_counter()
    s.sendall(b"PING\r\n")
    while not s.recv(64).endswith(b"\r\n"):
        pass
    worst = max(worst, time.perf_counter() - t)
    n += 1
    time.sleep(0.001)
print("%.1f %d" % (worst * 1000, n))
PY
PROBE=$!
sleep 0.5
./target/release/chorus audit diff "127.0.0.1:$pa" "127.0.0.1:$pb" >/dev/null || true
touch "$WORK/stop_probe"; wait "$PROBE"
read -r stall pings < "$WORK/stall"

found=$(python3 -c 'import json,sys; print("\n".join(sorted(json.loads(l)["key"] for l in open(sys.argv[1]))))' "$WORK/diff")
expected=$(sort "$WORK/changed")
echo
echo "chorus audit diff, $KEYS keys, $CHANGED changed on B while apart ($(machine))"
printf '%-34s %s\n' "exit code" "$code (1: differences found)"
printf '%-34s %s\n' "keys reported" "$(wc -l < "$WORK/diff")"
if [ "$found" = "$expected" ]; then
    printf '%-34s %s\n' "the changed keys, exactly" "yes"
else
    printf '%-34s %s\n' "the changed keys, exactly" "NO"
fi
awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%-34s %.2f\n", "wall time, s", b - a}'
awk -v b="$before" -v a="$after" -v i="$idle" 'BEGIN {printf "%-34s %d (%.1f KB)\n", "bytes exchanged, both nodes", a - b - i, (a - b - i) / 1024}'
printf '%-34s %s ms (%s PINGs)\n' "longest PING wait on A meanwhile" "$stall" "$pings"
[ "$found" = "$expected" ]
