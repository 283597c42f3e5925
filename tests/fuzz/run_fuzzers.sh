#!/usr/bin/env bash
# Runs each libFuzzer target of the "fuzz" preset for a bounded time from its committed seed
# corpus; exits non-zero on the first crash, sanitizer report, leak, uncaught exception or slow
# input (the reproducer is left in BUILD_DIR/fuzz-artifacts/).
#   tests/fuzz/run_fuzzers.sh [BUILD_DIR=build-fuzz] [SECONDS_EACH=30]
# New inputs the fuzzer finds go to BUILD_DIR/fuzz-corpus/<target>, never into the repository.
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build-fuzz}
seconds=${2:-30}
fuzz=tests/fuzz
mkdir -p "$build/fuzz-artifacts"
for target in safetensors layer_case; do
  scratch="$build/fuzz-corpus/$target"
  mkdir -p "$scratch"
  echo "fuzz_$target: ${seconds}s from $(ls "$fuzz/corpus/$target" | wc -l) seeds"
  # -timeout: an input taking 10 s is a hang; -rss_limit_mb: one using 2 GB is a memory bomb.
  log="$build/fuzz-$target.log"
  status=0
  "$build/tests/fuzz/fuzz_$target" -max_total_time="$seconds" -max_len=16384 -timeout=10 \
    -rss_limit_mb=2048 -dict="$fuzz/$target.dict" -print_final_stats=1 \
    -artifact_prefix="$build/fuzz-artifacts/" "$scratch" "$fuzz/corpus/$target" >"$log" 2>&1 || status=$?
  grep -E "^stat::(number_of_executed_units|peak_rss_mb)|^#[0-9]+ +DONE" "$log" || true
  if [ "$status" -ne 0 ]; then
    tail -n 60 "$log" >&2
    echo "fuzz_$target: FAILED (exit $status); reproducer in $build/fuzz-artifacts/, log $log" >&2
    exit 1
  fi
done
