#!/usr/bin/env bash
# `make fuzz-smoke`: every target for FUZZ_SECONDS from the seed corpus, then one line per
# target: executions, executions a second, and whether it crashed. Exits 1 if any did.
#
#   fuzz/smoke.sh SECONDS TARGET...
set -uo pipefail
cd "$(dirname "$0")"
seconds=${1:?seconds}
shift
[[ -d corpus/gguf_model && -d corpus/openai_request ]] ||
    cargo run --quiet --release --example gen_seeds
mkdir -p ../build/fuzz
summary=()
failed=0
for t in "$@"; do
    log=../build/fuzz/$t.log
    echo "fuzz-smoke: $t for $seconds s (log: build/fuzz/$t.log)"
    mkdir -p "corpus/$t"
    cargo fuzz run "$t" "corpus/$t" -- -max_total_time="$seconds" >"$log" 2>&1
    rc=$?
    runs=$(grep -oE '^Done [0-9]+ runs' "$log" | grep -oE '[0-9]+' || echo 0)
    if [[ $rc == 0 ]]; then
        summary+=("$t: $runs executions ($((runs / seconds))/s), no crash")
    else
        failed=1
        summary+=("$t: CRASH after $runs executions: $(grep -m1 -E 'panicked|ERROR' "$log")")
        summary+=("  $(grep -m1 -oE 'artifacts/[^ ]+' "$log")")
    fi
done
printf 'fuzz-smoke: %s\n' "${summary[@]}"
exit $failed
