#!/usr/bin/env bash
# Builds the fuzz targets and runs each for a bounded time; prints one
# line per target (executions, seconds, corpus size) and fails on the
# first crash, leaving the crashing input under fuzz/artifacts/<target>/.
#
#   fuzz/run.sh [SECONDS] [TARGET...]
#
# SECONDS per target defaults to 30; RUNS=N stops each after N
# executions instead (whichever comes first). The committed seeds in
# fuzz/corpus/<target> are copied to fuzz/work/<target>, which grows with
# what libFuzzer finds (ignored by git). Needs cargo-fuzz (installed here
# if missing: `cargo install cargo-fuzz --locked`). libFuzzer needs
# unstable compiler flags: RUSTC_BOOTSTRAP=1 lets this stable toolchain
# take them; no other toolchain is needed.
set -euo pipefail
cd "$(dirname "$0")"
SECONDS_EACH=${1:-30}
shift || true
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
  TARGETS=(request csv snapshot normalize config copy_row)
fi
export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
# No sanitizer: the code under test has no unsafe outside the snapshot
# mapping, which the targets do not use (they read heap copies); debug
# assertions on, so arithmetic overflow fails too.
FLAGS=(--sanitizer none)
for t in "${TARGETS[@]}"; do
  cargo fuzz build "${FLAGS[@]}" "$t"
done
for t in "${TARGETS[@]}"; do
  mkdir -p "work/$t" "artifacts/$t"
  cp -n corpus/"$t"/* "work/$t/" 2>/dev/null || true
  log=$(mktemp)
  set +e
  cargo fuzz run "${FLAGS[@]}" "$t" "work/$t" -- \
    -max_total_time="$SECONDS_EACH" ${RUNS:+-runs="$RUNS"} -print_final_stats=1 \
    -artifact_prefix="artifacts/$t/" >"$log" 2>&1
  status=$?
  set -e
  runs=$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -Eo '[0-9]+$' || echo 0)
  secs=$(grep -Eo 'Done [0-9]+ runs in [0-9]+ second' "$log" | grep -Eo 'in [0-9]+' | grep -Eo '[0-9]+' || echo "$SECONDS_EACH")
  corpus=$(ls "work/$t" | wc -l)
  echo "fuzz $t: ${runs} executions in ${secs} s, corpus ${corpus} inputs, exit ${status}"
  if [ "$status" -ne 0 ]; then
    grep -E 'panicked|ERROR|SUMMARY|Test unit written' "$log" | head -20
    rm -f "$log"
    exit 1
  fi
  rm -f "$log"
done
