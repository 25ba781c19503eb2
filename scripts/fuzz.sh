#!/usr/bin/env bash
# Runs the fuzz targets of fuzz/ (docs/FUZZING.md) one after another, each for SECONDS, and
# prints one line per target: executions, executions per second, crashes (0, or the saved
# input) and libFuzzer's exit status. Exits non-zero if any target crashed.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     # default: 60 s, every target
#
# Each target starts from its committed seeds (fuzz/seeds/TARGET) and its working corpus
# (fuzz/corpus/TARGET, not committed), where libFuzzer adds the inputs that reach new code.
# Crashing inputs are saved in fuzz/artifacts/TARGET/. One libFuzzer process at a time, at the
# lowest CPU priority (FUZZ_NICE, default 19), so a run only takes idle CPU. Figures of every run are
# appended to fuzz/runs.tsv (not committed). A target runs in one process (no -jobs/-workers).
#
# Environment: FUZZ_SANITIZER (default none: the decoders are safe Rust, and the checks that
# matter here, panics, overflow checks and debug assertions, are on; set `address` to add
# AddressSanitizer, at a cost in speed); cargo's own CARGO_BUILD_JOBS limits the build.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SECS=${1:-60}
[ $# -gt 0 ] && shift
case $SECS in '' | *[!0-9]*) echo "usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]" >&2; exit 2 ;; esac

# cargo-fuzz passes nightly-only compiler flags (sanitizer coverage instrumentation, -Z
# options). Only a stable toolchain is assumed; RUSTC_BOOTSTRAP=1 lets it accept them.
export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz (once, into cargo's bin directory)" >&2
  cargo install cargo-fuzz --locked --quiet
fi

cd "$ROOT/fuzz"
SANITIZER=${FUZZ_SANITIZER:-none}
TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
FUZZ=(--fuzz-dir "$ROOT/fuzz")
BUILD=(cargo fuzz build "${FUZZ[@]}" --sanitizer "$SANITIZER" --target "$TRIPLE")
mapfile -t ALL < <(cargo fuzz list "${FUZZ[@]}")
if [ $# -gt 0 ]; then TARGETS=("$@"); else TARGETS=("${ALL[@]}"); fi
for t in "${TARGETS[@]}"; do
  printf '%s\n' "${ALL[@]}" | grep -qx -- "$t" || { echo "no fuzz target $t (have: ${ALL[*]})" >&2; exit 2; }
done

start=$(date +%s)
nice -n 10 "${BUILD[@]}" >&2
echo "built ${#TARGETS[@]} targets in $(($(date +%s) - start)) s" >&2
BIN=$ROOT/fuzz/target/$TRIPLE/release

mkdir -p logs
printf '%-18s %12s %9s %6s  %s\n' target executions exec/s status crashes
failed=0
for t in "${TARGETS[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t" "seeds/$t"
  log=logs/$t.log
  before=$(find "artifacts/$t" -type f | sort)
  set +e
  nice -n "${FUZZ_NICE:-19}" "$BIN/$t" "corpus/$t" "seeds/$t" \
    -max_total_time="$SECS" -timeout=30 -rss_limit_mb=4096 \
    -print_final_stats=1 -artifact_prefix="artifacts/$t/" >"$log" 2>&1
  status=$?
  set -e
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
  new=$(comm -13 <(echo "$before") <(find "artifacts/$t" -type f | sort) | grep . || true)
  if [ -n "$new" ] || [ "$status" -ne 0 ]; then
    failed=1
    crashes=${new:-"see fuzz/$log"}
    crashes=$(echo "$crashes" | sed 's#^artifacts/#fuzz/artifacts/#' | paste -sd ' ')
  else
    crashes=0
  fi
  printf '%-18s %12s %9s %6s  %s\n' "$t" "${execs:-?}" "${rate:-?}" "$status" "$crashes"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$(date -u +%FT%TZ)" "$t" "$SECS" "${execs:-0}" \
    "${rate:-0}" "$status" "$crashes" >> runs.tsv
done
exit $failed
