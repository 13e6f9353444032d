#!/usr/bin/env bash
# The long fuzz run (issue #11): every fuzz test of the RESP parser and
# replication message decoding (tests/fuzz.rs), the replication frame
# decoder (transport/src/frame.rs) and the CRDT decoder (crdt/tests/fuzz.rs),
# one at a time, each property with $CASES cases, built optimised with
# overflow checks and debug assertions on (profile `fuzz`). Prints each
# test's wall time; a failure stops the run and proptest saves its seed.
#
#   bench/fuzz.sh            # 200000 cases per property
#   CASES=5000 bench/fuzz.sh
#
# PROPTEST_CASES overrides every property's own case count, so the
# megabyte-message frame property gets a hundredth of $CASES.
set -euo pipefail
cd "$(dirname "$0")/.."

CASES=${CASES:-200000}
# Each suite: the cargo target, then the filter naming its fuzz tests.
SUITES=(
    "-p chorus --test fuzz|"
    "-p chorus-transport --lib|frame::tests::"
    "-p chorus-crdt --test fuzz|"
)
OUT=$(mktemp)
trap 'rm -f "$OUT"' EXIT

elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%8.1f", b - a }'; }

echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "machine: $(nproc) vCPU, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "rustc: $(rustc --version)"
echo "cases per property: $CASES"
for suite in "${SUITES[@]}"; do
    # shellcheck disable=SC2086 # the target is several cargo arguments
    cargo test -q --profile fuzz ${suite%|*} --no-run
done

total=$(date +%s.%N)
for suite in "${SUITES[@]}"; do
    target=${suite%|*} filter=${suite#*|}
    # shellcheck disable=SC2086
    tests=$(cargo test -q --profile fuzz $target -- --list "$filter" 2>/dev/null | sed -n 's/: test$//p')
    for t in $tests; do
        cases=$CASES note=""
        if [ "$t" = frame::tests::framed_messages_split_anywhere_arrive_whole ]; then
            cases=$((CASES / 100 > 24 ? CASES / 100 : 24)) note=" ($cases cases)"
        fi
        start=$(date +%s.%N)
        # shellcheck disable=SC2086
        if ! PROPTEST_CASES=$cases cargo test -q --profile fuzz $target -- --exact "$t" \
            --test-threads 1 >"$OUT" 2>&1 || ! grep -q '^test result: ok. 1 passed' "$OUT"; then
            cat "$OUT" >&2
            echo "FAILED (or did not run): $t" >&2
            exit 1
        fi
        echo "$(elapsed "$start") s  $t$note"
    done
done
echo "$(elapsed "$total") s  total"
