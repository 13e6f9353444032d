#!/usr/bin/env bash
# Small hashes with a replicating peer, two Chorus builds (#13): per round and build, a pair of
# nodes peered both ways (writer on CPU 0, peer on CPU 1), 100,000 hashes of 10 fields loaded
# into the writer and replicated, then HSET of one field on the writer (-c 50 -P 16 -n $N
# -r 100000, redis-benchmark on CPU 1 beside the peer). Builds alternate over $ROUNDS rounds;
# medians. Every write reaches the peer as a delta merged into a hash it holds (packed there
# when the build packs).
#
#   bench/small-hashes-peer.sh OLD_BINARY NEW_BINARY
set -euo pipefail
cd "$(dirname "$0")/.."

OLD=${1:?usage: bench/small-hashes-peer.sh OLD_BINARY NEW_BINARY}
NEW=${2:?usage: bench/small-hashes-peer.sh OLD_BINARY NEW_BINARY}
ROUNDS=${ROUNDS:-3}
N=${N:-300000}

source bench/common.sh
ensure_tools "redis-benchmark redis-cli" "redis-tools"

small_hashes_resp "$WORK/small.resp"

cli() { redis-cli -a bench --no-auth-warning "$@"; }

RESULTS="$WORK/results"
: > "$RESULTS"
for round in $(seq 1 "$ROUNDS"); do
    for build in old new; do
        bin=$OLD
        [ "$build" = new ] && bin=$NEW
        start_pair "$bin"
        cli -p "$pa" --pipe < "$WORK/small.resp" >/dev/null
        for _ in $(seq 1 300); do
            [ "$(cli -p "$pb" DBSIZE)" = 100000 ] && break
            sleep 0.2
        done
        rps=$(taskset -c 1 redis-benchmark -a bench -p "$pa" -c 50 -P 16 -n "$N" -r 100000 --csv \
            HSET user:__rand_int__ field3 vvvvvvvvvvvvvvvv 2>/dev/null \
            | awk -F'","' 'NR>1 {gsub(/"/,"",$2); print $2}')
        echo "$build HSET $rps" >> "$RESULTS"
        echo "round $round: $build HSET $rps (peer: $(cli -p "$pb" OBJECT ENCODING user:000000000007))" >&2
        stop "$a"
        stop "$b"
    done
done
old=$(median_of old HSET)
new=$(median_of new HSET)
awk -v o="$old" -v n="$new" 'BEGIN {printf "HSET with a peer, median of rounds: old %.0f, new %.0f, new/old %.2f\n", o, n, n / o}'
machine
