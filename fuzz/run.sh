#!/usr/bin/env bash
# Runs fuzz targets one after another, each for SECONDS (default 3600),
# niced, with the seed corpus in fuzz/corpus/<target> and new inputs in
# $FUZZ_WORK/<target> (default /tmp/fuzz-work), which starts from where the
# recorded runs ended (corpus-runs/<target>.tar.xz) when it is empty. Logs to
# $FUZZ_WORK/<target>.log; crashes land in fuzz/artifacts/<target>/.
#
#   fuzz/run.sh 600 client_message goconf     # two targets, 10 minutes each
#   fuzz/run.sh                               # every target, an hour each
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-3600}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(RUSTC_BOOTSTRAP=1 cargo fuzz list)
fi
work="${FUZZ_WORK:-/tmp/fuzz-work}"
tdir="${FUZZ_TARGET_DIR:-target}"
for t in "${targets[@]}"; do
    mkdir -p "$work/$t"
    if [ -z "$(ls -A "$work/$t")" ] && [ -f "corpus-runs/$t.tar.xz" ]; then
        tar -xJf "corpus-runs/$t.tar.xz" -C "$work"
    fi
    echo "== $t for ${secs}s (log: $work/$t.log)"
    # -s none: the server forbids unsafe code, so AddressSanitizer finds
    # nothing there and halves the speed. Debug assertions and overflow
    # checks stay on (cargo fuzz's default).
    RUSTC_BOOTSTRAP=1 nice -n 19 cargo fuzz run -s none --target-dir "$tdir" "$t" \
        "$work/$t" "corpus/$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=16384 \
        -print_final_stats=1 >"$work/$t.log" 2>&1 || echo "!! $t failed, see $work/$t.log"
    grep -E "^stat::number_of_executed_units|^stat::peak_rss_mb|^Done" "$work/$t.log" || true
done
