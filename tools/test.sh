#!/usr/bin/env bash
# Installs dependencies, builds and runs the test suite. Usage: tools/test.sh [release|asan|tsan]
#   release (default): every test, plus the install/find_package/pkg-config consumer test
#   asan:              every test under AddressSanitizer + UndefinedBehaviorSanitizer
#   tsan:              the tests labelled "concurrency" under ThreadSanitizer (clang)
# The release preset then runs the GPU check script against the emulated CUDA driver
# (bench/gpu.sh run --emulated) on the tree it just built: under a minute on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
preset="${1:-release}"
case "$preset" in release|asan|tsan) ;; *) echo "usage: tools/test.sh [release|asan|tsan]" >&2; exit 2;; esac
tools/setup.sh
# Each stage's time goes to the log, for keeping CI (three presets) under its 20-minute budget.
start=$SECONDS
cmake --preset "$preset" >/dev/null
cmake --build --preset "$preset"
built=$SECONDS
ctest --preset "$preset" -j"$(nproc)"
echo "tools/test.sh: $preset: build $((built - start)) s, tests $((SECONDS - built)) s"

# bench/gpu.sh is what a GPU lease runs; keep it working between leases. The same script against
# tests/fake_cuda, on build/release (no extra build); summary in build/release/gpu-summary.md. A
# failing, timed-out or skipped-for-time check fails CI.
if [[ "$preset" == release ]]; then
  if [[ -f build/release/tests/libuhmm_fake_cuda_driver.so ]]; then
    start=$SECONDS
    rc=0
    UHMM_GPU_BUILD=build/release bench/gpu.sh run --emulated || rc=$?
    echo "tools/test.sh: bench/gpu.sh run --emulated: exit $rc, $((SECONDS - start)) s"
    exit "$rc"
  fi
  echo "tools/test.sh: bench/gpu.sh run --emulated skipped: build/release has no CUDA backend (no CUDA toolkit)"
fi
