#!/usr/bin/env bash
# Fresh machine to running demo: install dependencies, build (release preset), run the main demo
# on the best available backend (the runtime picks CUDA when a GPU backend is built and a device
# is present, else the host emulation; UHMM_BACKEND overrides).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
cmake --preset release >/dev/null
cmake --build --preset release
exec build/release/samples/uhmm_demo "$@"
