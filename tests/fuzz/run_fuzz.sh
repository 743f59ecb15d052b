#!/usr/bin/env bash
# run_fuzz.sh TARGET SEEDS REGRESSIONS WORKDIR [SECONDS]: runs one libFuzzer target for a bounded
# time over the seed corpus and the kept regression inputs, and reports its executions. A crash
# input is kept under WORKDIR/crash-*: copy it to tests/fuzz/regressions/ once fixed.
set -u
target=$1 seeds=$2 regressions=$3 work=$4 seconds=${5:-${PARITY_FUZZ_SECONDS:-30}}
name=$(basename "$target")
mkdir -p "$work/corpus"
# every kept regression input must be rejected or read cleanly, before any new fuzzing
"$target" -runs=0 "$regressions" >"$work/regressions.log" 2>&1 || { cat "$work/regressions.log"; echo "$name: a regression input fails again"; exit 1; }
ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1} "$target" -max_total_time="$seconds" -print_final_stats=1 \
  -artifact_prefix="$work/" -max_len=65536 "$work/corpus" "$seeds" >"$work/fuzz.log" 2>&1
rc=$?
runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/fuzz.log")
if [[ $rc -ne 0 || -z $runs ]]; then
  tail -40 "$work/fuzz.log"
  echo "$name: FAILED (exit $rc); the input is under $work/"
  exit 1
fi
echo "$name: $runs executions in ${seconds} s, corpus $(ls "$work/corpus" | wc -l) inputs, no crash" | tee "$work/summary.txt"
