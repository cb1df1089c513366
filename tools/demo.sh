#!/usr/bin/env bash
# Fresh machine to running demo: install dependencies, build (release preset), run the main demo
# on the best available backend (the runtime picks CUDA when a GPU and driver are present, else the
# host emulation; UHMM_BACKEND overrides). With a GPU it also runs the transparent vector_add.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
cmake --preset release >/dev/null
cmake --build --preset release
build/release/samples/uhmm_demo "$@"
sample=build/release/samples/cuda/uhmm_cuda_vector_add
if [[ -x "$sample" ]]; then
  rc=0
  "$sample" 16 >/tmp/uhmm_vector_add.log 2>&1 || rc=$?
  if [[ $rc -eq 77 ]]; then
    echo "(no NVIDIA GPU here: skipped the CUDA vector_add sample)"
  else
    cat /tmp/uhmm_vector_add.log
    exit "$rc"
  fi
fi
