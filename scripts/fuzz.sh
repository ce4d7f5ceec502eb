#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, ASan+UBSan) and runs each for a bounded time on a copy of
# its seed corpus; fails if any run finds a crash, a leak or undefined behaviour. CI runs it with
# 30 s per target; for a long run: scripts/fuzz.sh 3600   (seconds per target)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-30}
BDIR=${FUZZ_BUILD_DIR:-build-fuzz}
CC=clang cmake -S . -B "$BDIR" -DALIGW_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
# Every folder under tests/fuzz/corpus names a target (tests/fuzz/CMakeLists.txt builds it).
TARGETS=$(cd tests/fuzz/corpus && ls -d fuzz_* | tr '\n' ' ')
# shellcheck disable=SC2086
cmake --build "$BDIR" -j"$(nproc)" --target $TARGETS >/dev/null
status=0
for t in $TARGETS; do
  work=$(mktemp -d)
  log=$(mktemp)
  cp -r "tests/fuzz/corpus/$t/." "$work/"
  art=$(mktemp -d)
  # -artifact_prefix: libFuzzer writes crash-/slow-unit- files into the current directory by
  # default (two slow-units once landed in the repository's root that way).
  if UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 "$BDIR/tests/fuzz/$t" "$work" \
      -max_total_time="$SECS" -max_len=4096 -print_final_stats=1 \
      -artifact_prefix="$art/" >"$log" 2>&1; then
    echo "fuzz $t: $(grep -m1 'stat::number_of_executed_units' "$log" | awk '{print $2}') runs in ${SECS}s, nothing found"
  else
    echo "fuzz $t: FOUND A PROBLEM"
    tail -n 60 "$log"
    ls -l "$art"
    status=1
  fi
  rm -rf "$work" "$log" "$art"
done
exit $status
