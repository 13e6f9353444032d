#!/usr/bin/env bash
# Is the store engine fit? (#14: sled, with no release since 2021, was not: docs/benchmarks.md.)
#
#   bench/store-fitness.sh                # KEYS=100000 VALUE=100 ROUNDS=10 KILLS=5
#
# 1. Space amplification: KEYS keys of VALUE bytes written, then every key overwritten
#    ROUNDS times, a SAVE (a fold into the store) after each round; the store's bytes on disk
#    against the bytes the keys and values hold.
# 2. Recovery after kill -9 in the middle of a fold: a SAVE of a round of overwrites is
#    started and the node killed while it runs, KILLS times; each restart must load every
#    key, with the last acknowledged round's value.
set -euo pipefail
cd "$(dirname "$0")/.."

KEYS=${KEYS:-100000}
VALUE=${VALUE:-100}
ROUNDS=${ROUNDS:-10}
KILLS=${KILLS:-5}

source bench/common.sh
ensure_tools "redis-cli" "redis-tools"
cargo build --release -q

DIR="$WORK/data"
mkdir -p "$DIR"
PORT=$(free_port)

start() { # start APPENDFSYNC
    ./target/release/chorus server --port "$PORT" --appendonly yes --appendfsync "$1" --dir "$DIR" \
        2>>"$WORK/chorus.log" &
    PID=$!; PIDS+=("$PID")
    wait_ready "$PORT"
}

# write_round N: every key set to a value of VALUE bytes that names round N.
write_round() {
    awk -v keys="$KEYS" -v len="$VALUE" -v round="$1" 'BEGIN {
        pad = sprintf("%" len "s", ""); gsub(/ /, "x", pad)
        for (i = 0; i < keys; i++) {
            v = substr("r" round ":" pad, 1, len)
            printf "*3\r\n$3\r\nSET\r\n$%d\r\nkey:%d\r\n$%d\r\n%s\r\n", length("key:" i), i, len, v
        }
    }' | redis-cli -p "$PORT" --pipe >/dev/null
}

field() { redis-cli -p "$PORT" INFO persistence | tr -d '\r' | awk -F: -v f="$1" '$1 == f {print $2}'; }

logical=$(awk -v keys="$KEYS" -v len="$VALUE" 'BEGIN {
    for (i = 0; i < keys; i++) total += length("key:" i) + len
    print total }')

start everysec
echo "space amplification: $KEYS keys x $VALUE-byte values ($logical bytes of keys and values)"
printf '%-6s %14s %14s %8s %10s\n' round store-bytes du-bytes amp save-ms
for round in $(seq 0 "$ROUNDS"); do
    write_round "$round"
    t0=$(date +%s%N)
    redis-cli -p "$PORT" SAVE >/dev/null
    ms=$(( ($(date +%s%N) - t0) / 1000000 ))
    sled=$(field store_disk_bytes)
    du=$(du -sb "$DIR/chorus.redb" | cut -f1)
    awk -v r="$round" -v s="$sled" -v d="$du" -v l="$logical" -v ms="$ms" \
        'BEGIN {printf "%-6s %14d %14d %8.2f %10d\n", r, s, d, d / l, ms}'
done
stop "$PID"
start everysec
echo "after a restart: $(du -sb "$DIR/chorus.redb" | cut -f1) bytes on disk"
stop "$PID"

echo
# appendfsync always: every acknowledged write is in the log before the kill.
echo "kill -9 during a fold (appendfsync always): $KILLS times"
last=$ROUNDS
ok=0
for k in $(seq 1 "$KILLS"); do
    start always
    round=$((last + 1))
    write_round "$round"
    redis-cli -p "$PORT" SAVE >/dev/null 2>&1 &
    sleep "0.0$((RANDOM % 9 + 1))"
    kill -9 "$PID"
    wait "$PID" 2>/dev/null || true
    start always
    size=$(redis-cli -p "$PORT" DBSIZE)
    sample=$(redis-cli -p "$PORT" GET "key:$((RANDOM % KEYS))")
    if [ "$size" = "$KEYS" ] && [ "${sample%%:*}" = "r$round" ]; then
        ok=$((ok + 1)); verdict=ok
    else
        verdict="FAILED (dbsize $size, sample ${sample:0:12})"
    fi
    echo "kill $k: restarted, $size keys, sample value of round ${sample%%:*}: $verdict"
    last=$round
    stop "$PID"
done
echo "$ok of $KILLS restarts after kill -9 mid-fold held every key with its last value"
machine
