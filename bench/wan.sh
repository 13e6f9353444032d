#!/usr/bin/env bash
# Replication across an emulated long-distance link (#16): two chorus nodes on
# loopback, each direction through chorus-linkem (delay each way, a bandwidth
# cap, optional loss).
#
#   bench/wan.sh                                   # about 10 minutes
#   RTTS="100 200" SIZES="100 1024" LINKS="1280kb:cubic 32mb:cubic 32mb:bbr" bench/wan.sh
#   LOSS=0.001 RATE=1gbit bench/wan.sh       # RATE=none: no bandwidth cap
#   COMPRESS=lz4 bench/wan.sh
#
# 1. Sustained rate: redis-benchmark -t set -c 50 -P 16 -n N -d SIZE writes to A
#    as fast as A takes them; then WAIT 1 on A. Every write has crossed the link
#    when WAIT returns, so N / (time from the first write to WAIT's return) is what
#    replication carried (writes/s and MB/s of values), whichever of the writer or
#    the link was slower (the writer alone does ~600k SET/s here).
# 2. Lag at half that rate: a load generator writes at half the sustained rate
#    while a probe writes a timestamped key on A every 20 ms and polls B for it;
#    p50/p99 of write-to-visible-on-B.
# LINKS are window:congestion pairs (repl-window-size, repl-congestion-control);
# 1280kb is quinn's default stream window, Chorus's before #16.
set -euo pipefail
cd "$(dirname "$0")/.."

RTTS=${RTTS:-"100 200"}
SIZES=${SIZES:-"100 1024"}
LINKS=${LINKS:-"1280kb:cubic 32mb:cubic 32mb:bbr"}
RATE=${RATE:-1gbit}
LOSS=${LOSS:-0}
PROBES=${PROBES:-200}
# lz4: compress the live stream (redis-benchmark's values are one repeated
# byte, so its ratio is an upper bound).
COMPRESS=${COMPRESS:-no}

source bench/common.sh
ensure_tools "redis-benchmark redis-cli" "redis-tools"
cargo build --release -q -p chorus -p chorus-linkem


relay() { # relay LISTEN_PORT TARGET_PORT ONE_WAY_MS
    local rate=()
    [ "$RATE" = none ] || rate=(--rate "$RATE")
    taskset -c 1 ./target/release/chorus-linkem --listen "127.0.0.1:$1" --to "127.0.0.1:$2" \
        --delay "$3ms" "${rate[@]}" --loss "$LOSS" 2>>"$WORK/linkem.log" &
    STARTED=$!
    PIDS+=("$STARTED")
}



# lag PORT_A PORT_B RATE SIZE -> "p50 p99" in ms of write-on-A to visible-on-B
# while a generator writes RATE SETs a second to A.
lag() {
    python3 - "$@" "$PROBES" <<'PY'
import socket, sys, time, threading, random
pa, pb, rate, size, probes = (int(a) for a in sys.argv[1:])
def conn(port):
    return socket.create_connection(("127.0.0.1", port))
def cmd(*args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out
stop = False
def load():
    s = conn(pa); value = b"v" * size
    per_tick = max(1, rate // 100); start = time.monotonic(); tick = 0
    while not stop:
        buf = b"".join(cmd(b"SET", b"load:%d" % random.randrange(100000), value) for _ in range(per_tick))
        s.sendall(buf)
        got = 0
        while got < per_tick * 5:
            got += len(s.recv(1 << 20))
        tick += 1
        d = start + tick * 0.01 - time.monotonic()
        if d > 0: time.sleep(d)
t = threading.Thread(target=load); t.start()
time.sleep(2)
a, b = conn(pa), conn(pb)
def roundtrip(s, c):
    s.sendall(c); return s.recv(65536)
lags = []
for i in range(probes):
    key = b"probe:%d" % i
    t0 = time.monotonic()
    roundtrip(a, cmd(b"SET", key, b"1"))
    while not roundtrip(b, cmd(b"EXISTS", key)).startswith(b":1"):
        time.sleep(0.0005)
    lags.append((time.monotonic() - t0) * 1000)
    time.sleep(0.02)
stop = True; t.join()
lags.sort()
print("%.1f %.1f" % (lags[len(lags) // 2], lags[int(len(lags) * 0.99) - 1]))
PY
}

# As docs/operations.md asks of a node on a long link: socket buffers that
# hold a burst (the nodes ask for 16 MB; the kernel caps them at these).
if [ "$(id -u)" = 0 ]; then
    sysctl -qw net.core.rmem_max=33554432 net.core.wmem_max=33554432 || true
fi
machine
echo "link: $RATE each way, loss $LOSS, compression $COMPRESS; redis-benchmark -t set -c 50 -P 16;" \
    "rmem_max $(sysctl -n net.core.rmem_max)"
printf '%5s %6s %-14s %9s %11s %8s %9s %9s %9s\n' rtt size link writes ops/s MB/s transfers lag_p50 lag_p99
for rtt in $RTTS; do
    one_way=$((rtt / 2))
    for size in $SIZES; do
        n=$(( size >= 1000 ? 200000 : 500000 ))
        for link in $LINKS; do
            window=${link%%:*}; cc=${link##*:}
            pa=$(free_repl_port); pb=$(free_repl_port); ra=$(free_repl_port); rb=$(free_repl_port)
            # A dials B through the relay on rb+10000, B dials A through ra+10000.
            relay $((rb + 10000)) $((pb + 10000)) "$one_way"
            relay $((ra + 10000)) $((pa + 10000)) "$one_way"
            common=(--masterauth bench --repl-window-size "$window" --repl-congestion-control "$cc"
                --repl-compression "$COMPRESS")
            start 0 "$pa" --replicaof 127.0.0.1 "$rb" "${common[@]}"; a=$STARTED
            start 1 "$pb" --replicaof 127.0.0.1 "$ra" "${common[@]}"; b=$STARTED
            redis-cli -p "$pa" SET warm 1 >/dev/null
            redis-cli -p "$pa" WAIT 1 30000 >/dev/null
            t0=$(now_ms)
            taskset -c 1 redis-benchmark -p "$pa" -c 50 -P 16 -n "$n" -d "$size" -r 100000 -t set -q >/dev/null 2>&1
            acked=$(redis-cli -p "$pa" WAIT 1 600000)
            t1=$(now_ms)
            [ "$acked" = 1 ] || echo "($rtt ms, $size B, $link): WAIT timed out" >&2
            ops=$(awk -v n="$n" -v ms=$((t1 - t0)) 'BEGIN {printf "%.0f", n * 1000 / ms}')
            mbs=$(awk -v o="$ops" -v s="$size" 'BEGIN {printf "%.1f", o * s / 1e6}')
            transfers=$(peer_field "$pa" state_transfers)
            read -r p50 p99 < <(lag "$pa" "$pb" $((ops / 2)) "$size")
            printf '%5s %6s %-14s %9s %11s %8s %9s %9s %9s\n' "$rtt" "$size" "$link" "$n" "$ops" "$mbs" "$transfers" "$p50" "$p99"
            for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
            PIDS=()
            sleep 1
        done
    done
done
