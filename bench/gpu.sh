#!/usr/bin/env bash
# The whole GPU check in one script: the runtime's behaviour suites on the CUDA backend, every CUDA
# sample, the demo under uhmm-prof, a short table of those checks, and last the performance table
# (bench/uhmm_bench: cudaMallocManaged vs uhmm, same process; docs/PERFORMANCE.md).
#
#   bench/gpu.sh build   On a machine with the dependencies (tools/setup.sh): configure and build
#                        build/gpu (Release, no debug info) and copy the shared libraries a bare GPU
#                        machine lacks (Abseil) into build/gpu/lib.
#   bench/gpu.sh run     On the GPU machine (no apt, no network needed): run from build/gpu.
#   bench/gpu.sh         Both, on a machine that has the GPU and the dependencies.
#
# With the device tool: `bench/gpu.sh build` here, then run `bench/gpu.sh run` there with
# carry=["build/gpu"]. Logs go to $OUT/gpu-logs when $OUT is set, else build/gpu/logs.
set -uo pipefail
cd "$(dirname "$0")/.."
B=build/gpu
mode="${1:-all}"

build() {
  set -e
  cmake --preset gpu >/dev/null
  cmake --build --preset gpu
  mkdir -p "$B/lib"
  # Every non-system library the binaries load, resolved here, so the GPU machine needs only libc,
  # libstdc++ and the NVIDIA driver.
  for bin in "$B"/tests/*_test "$B"/samples/uhmm_demo "$B"/samples/cuda/uhmm_cuda_* "$B"/bench/uhmm_bench \
             "$B"/runtime/libuhmm.so; do
    ldd "$bin" | awk '/=> \// {print $3}' | grep -E 'libabsl|libgtest|libgmock|libhwloc|libudev' || true
  done | sort -u | xargs -r -I{} cp -L {} "$B/lib/"
  strip --strip-unneeded "$B"/lib/*.so* "$B"/runtime/libuhmm.so* 2>/dev/null || true
  echo "bench/gpu.sh: build/gpu is ready to carry ($(du -sh "$B" | cut -f1))"
  set +e
}

run() {
  if [[ ! -x "$B/tests/migrate_test" ]]; then
    echo "bench/gpu.sh: $B is not built; run 'bench/gpu.sh build' first" >&2
    exit 2
  fi
  export LD_LIBRARY_PATH="$PWD/$B/lib:$PWD/$B/runtime${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  local logs="${OUT:-$B}/gpu-logs"
  mkdir -p "$logs"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null \
    | sed 's/^/gpu: /' || echo "gpu: nvidia-smi not available"
  # Transparent launches need CUPTI; the backend searches the usual toolkit folders, this finds
  # it anywhere under /usr/local and /opt.
  if [[ -z "${UHMM_CUPTI_LIBRARY:-}" ]]; then
    local cupti
    cupti=$(find /usr/local /opt /usr/lib -name 'libcupti.so*' 2>/dev/null | sort | head -1)
    [[ -n "$cupti" ]] && export UHMM_CUPTI_LIBRARY="$cupti"
  fi
  echo "cupti: ${UHMM_CUPTI_LIBRARY:-not found (transparent launches off; samples sync explicitly)}"
  local rows=() failed=0
  for suite in migrate_test concurrency_test process_test bad_input_test; do
    UHMM_TEST_BACKEND=cuda timeout 600 "$B/tests/$suite" >"$logs/$suite.log" 2>&1
    local rc=$?
    local passed failed_n skipped
    passed=$(grep -c '^\[       OK \]' "$logs/$suite.log")
    failed_n=$(grep -c '^\[  FAILED  \] [A-Za-z].*([0-9]* ms)' "$logs/$suite.log")
    skipped=$(grep -c '^\[  SKIPPED \] [A-Za-z].*([0-9]* ms)' "$logs/$suite.log")
    # Everything skipped on a GPU machine means the backend did not come up: a failure here.
    [[ $rc -ne 0 || $passed -eq 0 ]] && failed=1
    rows+=("| cuda: $suite | $passed passed, $failed_n failed, $skipped skipped | rc $rc |")
  done
  for sample in vector_add stencil oversubscribe fault_latency; do
    timeout 600 "$B/samples/cuda/uhmm_cuda_$sample" >"$logs/$sample.log" 2>&1
    local rc=$?
    local verdict
    verdict=$(grep -E '^(PASS|FAIL|SKIP)' "$logs/$sample.log" | tail -1)
    [[ $rc -ne 0 ]] && failed=1
    rows+=("| sample: $sample | ${verdict:-no verdict} | rc $rc |")
  done
  UHMM_BACKEND=cuda timeout 600 "$B/samples/uhmm_demo" >"$logs/demo.log" 2>&1
  local rc=$?
  [[ $rc -ne 0 ]] && failed=1
  rows+=("| demo: uhmm_demo (cuda) | $(tail -1 "$logs/demo.log" | cut -c1-160) | rc $rc |")
  # Where a GPU fault's microseconds go: the demo under uhmm-prof, per-phase table kept.
  UHMM_BACKEND=cuda timeout 600 "$B/tools/uhmm_prof/uhmm-prof" record -o "$logs/demo.trace" -- \
    "$B/samples/uhmm_demo" >"$logs/prof_record.log" 2>&1
  rc=$?
  "$B/tools/uhmm_prof/uhmm-prof" report "$logs/demo.trace" --plot "$logs/demo_faults.svg" \
    --chrome "$logs/demo_trace.json" >"$logs/prof_report.log" 2>&1 || rc=1
  [[ $rc -ne 0 ]] && failed=1
  rows+=("| uhmm-prof: demo (cuda) | $(grep -E '^  end to end' "$logs/prof_report.log" | tr -s ' ' | cut -c1-120) | rc $rc |")

  echo "---- uhmm-prof report (demo on the GPU)"
  sed -n '/^CPU fault latency/,/^$/p' "$logs/prof_report.log"
  for f in "$logs"/{vector_add,stencil,oversubscribe,fault_latency,demo}.log; do
    echo "---- $(basename "$f")"
    grep -E '^\||PASS|FAIL|SKIP|stats|ratio|/ UVM|%' "$f" | head -20
  done
  for suite in migrate_test concurrency_test process_test bad_input_test; do
    grep -E 'Failure$|^\[  FAILED  \] [A-Za-z].*\(' -A4 "$logs/$suite.log" | head -40
  done
  echo
  echo "| check | result | exit |"
  echo "|---|---|---|"
  printf '%s\n' "${rows[@]}"
  local why
  why=$(grep -h -m1 -o 'backend cuda unavailable: .*' "$logs"/*_test.log | head -1)
  [[ -n "$why" ]] && echo "note: $why"

  # The performance table, last. The hugetlb row needs 2 MiB hugepages: reserve them when root
  # (1 GiB of data plus slack) and give them back afterwards.
  local huge_before="" need=$(( (${UHMM_BENCH_MIB:-1024} / 2) + 64 ))
  if [[ $(id -u) -eq 0 && -w /proc/sys/vm/nr_hugepages ]]; then
    huge_before=$(cat /proc/sys/vm/nr_hugepages)
    local free_now
    free_now=$(cat /sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages 2>/dev/null || echo 0)
    (( free_now < need )) && echo $(( huge_before + need - free_now )) > /proc/sys/vm/nr_hugepages
  fi
  echo
  echo "---- uhmm_bench (cudaMallocManaged vs uhmm, $(date -u +%F), $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1))"
  timeout 900 "$B/bench/uhmm_bench" --no-host --size "${UHMM_BENCH_MIB:-1024}" >"$logs/uhmm_bench.log" 2>&1
  rc=$?
  [[ -n "$huge_before" ]] && echo "$huge_before" > /proc/sys/vm/nr_hugepages
  cat "$logs/uhmm_bench.log"
  echo "uhmm_bench exit: $rc"
  [[ $rc -ne 0 ]] && failed=1
  return $failed
}

case "$mode" in
  build) build ;;
  run) run ;;
  all) build && run ;;
  *) echo "usage: bench/gpu.sh [build|run]" >&2; exit 2 ;;
esac
