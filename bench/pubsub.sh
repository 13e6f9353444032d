#!/usr/bin/env bash
# PUBLISH fan-out on one node, Chorus vs redis-server, side by side in one run (#15).
#
#   bench/pubsub.sh                        # full run
#   N=200000 ROUNDS=1 bench/pubsub.sh      # quick look
#
# $SUBSCRIBERS connections (one Python process, reading and discarding) SUBSCRIBE to one
# channel; redis-benchmark -c 50 -P 16 -n $N publishes $SIZE-byte messages to it. Each
# server is pinned to CPU 0, redis-benchmark and the subscribers to CPU 1 (taskset); the
# servers alternate over $ROUNDS rounds and the table reports medians of publishes/s and of
# messages delivered/s. A run counts only if every subscriber is still connected at the end
# and received every message (the servers' pubsub output limit closes one that falls behind).
#
# Then across nodes: two Chorus nodes replicating on 127.0.0.1 (A on CPU 0, B on CPU 1); a
# subscriber on B, and a publisher on A sending $RATE messages/s for $SECONDS_ACROSS s, each
# carrying its send time; reports the latency from PUBLISH on A to receipt on B, p50/p99/max.
# Last, $INVALIDATIONS times: a RESP3 client on B with CLIENT TRACKING reads a key, a client on
# A writes it; reports the time from the SET on A to the invalidation on B.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-1000000}
ROUNDS=${ROUNDS:-3}
SUBSCRIBERS=${SUBSCRIBERS:-50}
SIZE=${SIZE:-16}
RATE=${RATE:-1000}
SECONDS_ACROSS=${SECONDS_ACROSS:-20}
INVALIDATIONS=${INVALIDATIONS:-2000}

source bench/common.sh
ensure_tools "redis-server redis-benchmark redis-cli" "redis-server redis-tools"
cargo build --release -q

cat > "$WORK/subscribers.py" <<'PY'
import selectors, signal, socket, sys
port, n, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
socks = []
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"SUBSCRIBE ch\r\n")
    socks.append(s)
for s in socks:
    got = b""
    while not got.endswith(b":1\r\n"):
        got += s.recv(64)
sel = selectors.DefaultSelector()
for s in socks:
    s.setblocking(False)
    sel.register(s, selectors.EVENT_READ)
total, closed = 0, 0
def finish(*_):
    with open(out, "w") as f:
        f.write(f"{total} {closed}\n")
    sys.exit(0)
signal.signal(signal.SIGTERM, finish)
print("ready", flush=True)
while True:
    for key, _ in sel.select(timeout=1):
        try:
            data = key.fileobj.recv(1 << 20)
        except BlockingIOError:
            continue
        if not data:
            sel.unregister(key.fileobj)
            closed += 1
        total += len(data)
PY



MESSAGE=$(head -c "$SIZE" /dev/zero | tr '\0' m)
# One message as a subscriber reads it.
FRAME=$(( $(printf '*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$%d\r\n%s\r\n' "$SIZE" "$MESSAGE" | wc -c) ))
RESULTS="$WORK/results"
: > "$RESULTS"
for round in $(seq 1 "$ROUNDS"); do
    for server in redis chorus; do
        read -r pid port < <(start_server "$server")
        wait_ready "$port"
        taskset -c 1 python3 "$WORK/subscribers.py" "$port" "$SUBSCRIBERS" "$WORK/subs.out" > "$WORK/subs.ready" &
        subs=$!
        PIDS+=("$subs")
        for _ in $(seq 1 100); do grep -q ready "$WORK/subs.ready" 2>/dev/null && break; sleep 0.1; done
        start_ms=$(now_ms)
        rps=$(taskset -c 1 redis-benchmark -p "$port" -c 50 -P 16 -n "$N" --csv PUBLISH ch "$MESSAGE" 2>/dev/null \
            | awk -F'","' 'NR>1 {gsub(/"/,"",$2); print $2}')
        # Every message written: the subscribers' byte count stops growing.
        want=$(( N * SUBSCRIBERS * FRAME ))
        sleep 2
        kill -TERM "$subs"; wait "$subs" 2>/dev/null || true
        read -r bytes closed < "$WORK/subs.out"
        end_ms=$(now_ms)
        complete=$([ "$bytes" -ge "$want" ] && [ "$closed" = 0 ] && echo yes || echo no)
        echo "round $round $server: $rps publishes/s, subscribers received $bytes of $want bytes, $closed closed"
        [ "$complete" = yes ] && echo "$server $rps" >> "$RESULTS"
        stop "$pid"
    done
done

echo
machine
echo "N=$N SUBSCRIBERS=$SUBSCRIBERS SIZE=$SIZE ROUNDS=$ROUNDS (-c 50 -P 16, server on CPU 0, clients on CPU 1)"
printf '%-10s %14s %14s %8s\n' server publishes/s deliveries/s runs
for server in redis chorus; do
    m=$(awk -v s=$server '$1==s {print $2}' "$RESULTS" | median)
    runs=$(awk -v s=$server '$1==s' "$RESULTS" | wc -l)
    printf '%-10s %14s %14s %8s\n' "$server" "${m:-none}" "$(awk -v m="${m:-0}" -v n="$SUBSCRIBERS" 'BEGIN {printf "%d", m*n}')" "$runs"
done
r=$(awk '$1=="redis" {print $2}' "$RESULTS" | median)
c=$(awk '$1=="chorus" {print $2}' "$RESULTS" | median)
[ -n "$r" ] && [ -n "$c" ] && awk -v r="$r" -v c="$c" 'BEGIN {printf "chorus/redis: %.2fx\n", c/r}'

echo
echo "Across nodes: publish on A, subscriber on B ($RATE/s for $SECONDS_ACROSS s)"
pa=$(free_repl_port); pb=$(free_repl_port)
start 0 "$pa" --masterauth bench --replicaof 127.0.0.1 "$pb"; a=$STARTED
start 1 "$pb" --masterauth bench --replicaof 127.0.0.1 "$pa"; b=$STARTED
for _ in $(seq 1 100); do
    [ "$(redis-cli -p "$pa" INFO replication | tr -d '\r' | awk -F: '$1=="connected_peers" {print $2}')" = 1 ] && break
    sleep 0.1
done
python3 - "$pa" "$pb" "$RATE" "$SECONDS_ACROSS" <<'PY'
import socket, sys, threading, time
pa, pb, rate, seconds = (int(a) for a in sys.argv[1:])
sub = socket.create_connection(("127.0.0.1", pb))
sub.sendall(b"SUBSCRIBE lat\r\n")
got = b""
while not got.endswith(b":1\r\n"):
    got += sub.recv(64)
lat = []
def listen():
    buf = b""
    while len(lat) < rate * seconds:
        data = sub.recv(65536)
        if not data:
            return
        now = time.perf_counter_ns()
        buf += data
        # Each message: *3 $7 message $3 lat $<n> <ns>; the payload is the last line.
        while buf.count(b"\r\n") >= 7:
            parts = buf.split(b"\r\n", 7)
            lat.append((now - int(parts[6])) / 1e6)
            buf = parts[7]
t = threading.Thread(target=listen, daemon=True)
t.start()
pub = socket.create_connection(("127.0.0.1", pa))
pub.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
start = time.perf_counter()
for i in range(rate * seconds):
    due = start + i / rate
    while time.perf_counter() < due:
        time.sleep(max(0, due - time.perf_counter()) / 2)
    stamp = str(time.perf_counter_ns()).encode()
    pub.sendall(b"*3\r\n$7\r\nPUBLISH\r\n$3\r\nlat\r\n$%d\r\n%s\r\n" % (len(stamp), stamp))
    pub.recv(64)
t.join(timeout=10)
lat.sort()
n = len(lat)
pick = lambda q: lat[min(n - 1, int(q * n))]
print(f"received {n} of {rate * seconds}; latency ms p50 {pick(0.5):.3f} p99 {pick(0.99):.3f} max {lat[-1]:.3f}")
PY
echo
echo "Across nodes: a client on B caching a key (CLIENT TRACKING), A writing it ($INVALIDATIONS times)"
python3 - "$pa" "$pb" "$INVALIDATIONS" <<'PY'
import socket, sys, time
pa, pb, n = (int(a) for a in sys.argv[1:])
def conn(port):
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s
def until(s, suffix):
    got = b""
    while not got.endswith(suffix):
        got += s.recv(65536)
    return got
cache, writer = conn(pb), conn(pa)
cache.sendall(b"HELLO 3\r\n"); until(cache, b"modules\r\n*0\r\n")
cache.sendall(b"CLIENT TRACKING ON\r\n"); until(cache, b"+OK\r\n")
lat = []
for i in range(n):
    cache.sendall(b"EXISTS cached\r\n"); until(cache, b"\r\n")
    # Let the read land before the write it is to hear of.
    time.sleep(0.001)
    start = time.perf_counter_ns()
    writer.sendall(b"SET cached %d\r\n" % i); until(writer, b"+OK\r\n")
    until(cache, b"$6\r\ncached\r\n")
    lat.append((time.perf_counter_ns() - start) / 1e6)
lat.sort()
pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]
print(f"{len(lat)} invalidations; from SET on A to the push on B, ms: p50 {pick(0.5):.3f} p99 {pick(0.99):.3f} max {lat[-1]:.3f}")
PY
stop "$a"; stop "$b"
