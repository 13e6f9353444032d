#!/usr/bin/env bash
# Hash, set and sorted-set commands, Chorus vs redis-server, side by side in one run (#13).
#
#   bench/collections.sh                   # full run
#   N=200000 ROUNDS=1 bench/collections.sh # quick look
#
# Throughput: redis-benchmark -n $N -r 100000 -c 50 -P 16 on one hash and one set
# (redis-benchmark's own HSET and SADD tests: fields and members element:0..99999),
# then HGET and SISMEMBER of random fields and members of them, and HINCRBY of 1,000
# counter fields; ZADD of random scores to random members of one sorted set (about
# 100k members), ZINCRBY, ZSCORE, ZRANGE 0 9 and ZREVRANK on it. Each server is pinned to CPU 0 and redis-benchmark to CPU 1 (taskset);
# the servers alternate over $ROUNDS rounds and the table reports medians.
# Memory: RSS growth for a 1M-element hash, set and sorted set, and 100k hashes of 10 fields
# (which redis-server keeps as listpacks), loaded with redis-cli --pipe.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-1000000}
ROUNDS=${ROUNDS:-3}
ELEMENTS=${ELEMENTS:-1000000}
SMALL=${SMALL:-100000}

source bench/common.sh
ensure_tools "redis-server redis-benchmark redis-cli" "redis-server redis-tools"
cargo build --release -q

rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }



# bench PORT NAME COMMAND...: "NAME rps" for one custom command at -P 16.
bench() {
    local port=$1 name=$2; shift 2
    taskset -c 1 redis-benchmark -p "$port" -c 50 -P 16 -n "$N" -r 100000 --csv "$@" 2>/dev/null \
        | awk -F'","' -v n="$name" 'NR>1 {gsub(/"/,"",$2); print n, $2}'
}

RESULTS="$WORK/results"
: > "$RESULTS"
# ONLY=memory skips the throughput rounds.
[ "${ONLY:-}" = memory ] && ROUNDS=0
for round in $(seq 1 "$ROUNDS"); do
    for server in redis chorus; do
        read -r pid port < <(start_server "$server")
        wait_ready "$port"
        {
            run_bench "$port" 16 hset,sadd
            bench "$port" HGET HGET myhash element:__rand_int__
            bench "$port" SISMEMBER SISMEMBER myset element:__rand_int__
            bench "$port" HINCRBY HINCRBY counters field:__rand_int__ 1
            bench "$port" INCR INCR counter:__rand_int__
            bench "$port" ZADD ZADD lb __rand_int__ element:__rand_int__
            bench "$port" ZINCRBY ZINCRBY lb 1 element:__rand_int__
            bench "$port" ZSCORE ZSCORE lb element:__rand_int__
            bench "$port" ZRANGE ZRANGE lb 0 9
            bench "$port" ZREVRANK ZREVRANK lb element:__rand_int__
        } | while read -r test rps; do echo "$server $test $rps" >> "$RESULTS"; done
        stop "$pid"
        echo "round $round: $server done" >&2
    done
done

[ "$ROUNDS" -gt 0 ] && {
echo
echo "Throughput, ops/s (median of $ROUNDS rounds; -n $N -r 100000 -c 50 -P 16; server on CPU 0, client on CPU 1)"
printf '%-10s %12s %12s %8s\n' test redis chorus ratio
for t in HSET SADD HGET SISMEMBER HINCRBY INCR ZADD ZINCRBY ZSCORE ZRANGE ZREVRANK; do
    r=$(median_of redis "$t")
    c=$(median_of chorus "$t")
    awk -v t="$t" -v r="$r" -v c="$c" 'BEGIN {printf "%-10s %12.0f %12.0f %8.2f\n", t, r, c, c / r}'
done
}

python3 - "$ELEMENTS" "$SMALL" "$WORK" <<'PY'
import sys
n, small, work = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
def cmd(*args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out
with open(work + "/hash.resp", "wb") as f:
    for i in range(n):
        f.write(cmd(b"HSET", b"bighash", b"field:%012d" % i, b"v" * 16))
with open(work + "/set.resp", "wb") as f:
    for i in range(n):
        f.write(cmd(b"SADD", b"bigset", b"member:%011d" % i))
with open(work + "/zset.resp", "wb") as f:
    for i in range(n):
        f.write(cmd(b"ZADD", b"bigzset", b"%d" % (i * 7919 % n), b"member:%011d" % i))
with open(work + "/small.resp", "wb") as f:
    for i in range(small):
        args = [b"HSET", b"user:%010d" % i]
        for j in range(10):
            args += [b"field%d" % j, b"v" * 16]
        f.write(cmd(*args))
PY

echo
echo "Memory: RSS growth per element (fields 18 bytes, values 16; members 18 bytes; small hashes: 10 fields of 6 bytes, values 16)"
printf '%-8s %-22s %14s\n' server load bytes_per_element
for server in redis chorus; do
    for load in hash set zset small; do
        read -r pid port < <(start_server "$server")
        wait_ready "$port"
        before=$(rss_kb "$pid")
        taskset -c 1 redis-cli -p "$port" --pipe < "$WORK/$load.resp" >/dev/null
        # Chorus builds a sorted set's score index on its first range read:
        # counted, as a sorted set in use has one.
        [ "$load" = zset ] && redis-cli -p "$port" ZRANGE bigzset 0 0 >/dev/null
        after=$(rss_kb "$pid")
        case $load in
            hash) elements=$(redis-cli -p "$port" HLEN bighash) ;;
            set) elements=$(redis-cli -p "$port" SCARD bigset) ;;
            zset) elements=$(redis-cli -p "$port" ZCARD bigzset) ;;
            small) elements=$(( $(redis-cli -p "$port" DBSIZE) * 10 )) ;;
        esac
        per=$(awk -v a="$after" -v b="$before" -v k="$elements" 'BEGIN {printf "%d", (a - b) * 1024 / k}')
        printf '%-8s %-22s %14s\n' "$server" "$load ($elements)" "$per"
        echo "$server $load $per" >> "$WORK/mem"
        stop "$pid"
    done
done
for load in hash set zset small; do
    r=$(awk -v l="$load" '$1=="redis" && $2==l {print $3}' "$WORK/mem")
    c=$(awk -v l="$load" '$1=="chorus" && $2==l {print $3}' "$WORK/mem")
    awk -v l="$load" -v c="$c" -v r="$r" 'BEGIN {printf "chorus/redis bytes per element, %s: %.2f\n", l, c / r}'
done
echo
machine
redis-server --version
