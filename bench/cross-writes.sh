#!/usr/bin/env bash
# What a field rewritten from another node costs while its kill is recorded (#13): a pair of
# nodes peered both ways (A on CPU 0, B on CPU 1), 100,000 hashes of 10 fields loaded into A and
# replicated; then B rewrites one field of every hash (each replaces A's write: one removal
# record per hash on both nodes, see docs/crdt-semantics.md "Fields and members"); then, for
# contrast, A rewrites the same fields again. Prints both nodes' RSS after each step, the
# records a sample of keys holds, and how long the records took to be collected.
#
#   bench/cross-writes.sh BINARY
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${1:?usage: bench/cross-writes.sh BINARY}

source bench/common.sh
ensure_tools "redis-cli" "redis-tools"

small_hashes_resp "$WORK/small.resp"
python3 - "$WORK/rewrite.resp" <<'PY'
import sys
with open(sys.argv[1], "wb") as f:
    for i in range(100000):
        key = b"user:%012d" % i
        args = [b"HSET", key, b"field3", b"w" * 16]
        out = b"*%d\r\n" % len(args)
        for a in args:
            out += b"$%d\r\n%s\r\n" % (len(a), a)
        f.write(out)
PY

cli() { redis-cli -a bench --no-auth-warning "$@"; }
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
# RSS and the allocator's bytes in use, in MB, of node PID on PORT.
mem() {
    echo "RSS $(($(rss_kb "$1") / 1024)) MB, allocated $(cli -p "$2" INFO memory | awk -F: '/^used_memory:/ {printf "%d", $2 / 1048576}') MB"
}
# Removal records held by a sample of 100 keys on the node at port $1.
records() {
    local n=0 i
    for i in $(seq 0 1000 99000); do
        r=$(cli -p "$1" CRDT.STATE "$(printf 'user:%012d' "$i")" | awk '/removal_records/ {getline; print; exit}')
        n=$((n + ${r:-0}))
    done
    echo "$n"
}

start_pair "$BIN"
cli -p "$pa" --pipe < "$WORK/small.resp" >/dev/null
for _ in $(seq 1 300); do
    [ "$(cli -p "$pb" DBSIZE)" = 100000 ] && break
    sleep 0.2
done
sleep 2
echo "loaded on A, replicated: A $(mem $a $pa); B $(mem $b $pb)"

for step in "B rewrites field3 of every hash (over A's writes):$pb" "A rewrites it again (over B's):$pa"; do
    what=${step%:*}
    port=${step##*:}
    start=$(date +%s.%N)
    cli -p "$port" --pipe < "$WORK/rewrite.resp" >/dev/null
    piped=$(date +%s.%N)
    for _ in $(seq 1 300); do
        [ "$(cli -p "$pa" HGET user:000000099999 field3)" = "$(cli -p "$pb" HGET user:000000099999 field3)" ] && break
        sleep 0.05
    done
    echo "$what, 100,000 HSETs piped in $(awk -v s="$start" -v e="$piped" 'BEGIN {printf "%.2f", e - s}') s: A $(mem $a $pa); B $(mem $b $pb); records in 100 sampled keys: A $(records "$pa"), B $(records "$pb"); encoding on B: $(cli -p "$pb" OBJECT ENCODING user:000000000007)"
    for _ in $(seq 1 600); do
        [ "$(records "$pa")" = 0 ] && [ "$(records "$pb")" = 0 ] && break
        sleep 0.1
    done
    end=$(date +%s.%N)
    echo "  records collected $(awk -v s="$start" -v e="$end" 'BEGIN {printf "%.1f", e - s}') s after the write began; A $(mem $a $pa); B $(mem $b $pb)"
done
stop "$a"
stop "$b"
machine
