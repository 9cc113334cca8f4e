#!/usr/bin/env bash
# Runs every libFuzzer target (or those named in $FUZZ_TARGETS) under
# ASan/UBSan, each for $FUZZ_SECONDS seconds or $FUZZ_RUNS executions, several
# at a time ($FUZZ_JOBS). Each target starts from its committed seed corpus,
# fuzz/corpus/<name>/, and writes what it finds to build-fuzz/corpus/<name>/
# (never into the repository). A crash input lands in build-fuzz/crashes/.
# At the end it prints one line per target: executions, seconds, result.
set -euo pipefail
cd "$(dirname "$0")/.."
FUZZ_SECONDS=${FUZZ_SECONDS:-60}
FUZZ_RUNS=${FUZZ_RUNS:--1}
FUZZ_JOBS=${FUZZ_JOBS:-$(nproc)}
targets=${FUZZ_TARGETS:-$(ls fuzz/*_fuzz.cc | xargs -n1 basename | sed 's/_fuzz\.cc$//')}
mkdir -p build-fuzz/crashes build-fuzz/logs

run_one() {
  local name=$1
  local dict=()
  [ -f "fuzz/$name.dict" ] && dict=(-dict="fuzz/$name.dict")
  mkdir -p "build-fuzz/corpus/$name" "fuzz/corpus/$name"
  local log="build-fuzz/logs/$name.log"
  local start=$SECONDS rc=0
  "./build-fuzz/${name}_fuzz" -max_total_time="$FUZZ_SECONDS" -runs="$FUZZ_RUNS" \
    -rss_limit_mb=4096 -timeout=30 -print_final_stats=1 \
    -artifact_prefix="build-fuzz/crashes/$name-" "${dict[@]}" \
    "build-fuzz/corpus/$name" "fuzz/corpus/$name" >"$log" 2>&1 || rc=$?
  local runs
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
  if [ "$rc" -eq 0 ]; then
    echo "$name: $runs executions in $((SECONDS - start)) s, no finding"
  else
    echo "$name: FINDING after $((SECONDS - start)) s (exit $rc), see $log and build-fuzz/crashes/"
  fi
  return "$rc"
}

export -f run_one
export FUZZ_SECONDS FUZZ_RUNS
status=0
printf '%s\n' $targets | xargs -P "$FUZZ_JOBS" -I{} bash -c 'run_one {}' || status=1
exit $status
