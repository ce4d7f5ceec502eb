#!/usr/bin/env bash
# Builds aligw (a -Werror build and an ASan+UBSan build) and runs the whole CTest suite on both.
# This is the README's test command and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
JOBS=$(nproc)
cmake -S . -B build -DALIGW_WERROR=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$JOBS"
cmake -S . -B build-asan -DALIGW_WERROR=ON -DALIGW_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug >/dev/null
cmake --build build-asan -j"$JOBS"
echo "== sanitizer build (ASan+UBSan)"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir build-asan --output-on-failure -j2 -L sanitize
echo "== fuzzing (libFuzzer, ASan+UBSan, 30 s per parser)"
scripts/fuzz.sh 30
echo "== full suite"
ctest --test-dir build --output-on-failure -j2
