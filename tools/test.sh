#!/usr/bin/env bash
# Installs dependencies, builds and runs the test suite. Usage: tools/test.sh [release|asan|tsan]
#   release (default): every test, plus the install/find_package/pkg-config consumer test
#   asan:              every test under AddressSanitizer + UndefinedBehaviorSanitizer
#   tsan:              the tests labelled "concurrency" under ThreadSanitizer (clang)
set -euo pipefail
cd "$(dirname "$0")/.."
preset="${1:-release}"
case "$preset" in release|asan|tsan) ;; *) echo "usage: tools/test.sh [release|asan|tsan]" >&2; exit 2;; esac
tools/setup.sh
cmake --preset "$preset" >/dev/null
cmake --build --preset "$preset"
ctest --preset "$preset" -j"$(nproc)"
