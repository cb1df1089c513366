#!/usr/bin/env bash
# The whole GPU check in one script, sized for a GPU lease: first what uhmm needs from the machine
# (kernel, userfaultfd and its features, hugepages, CUPTI, card and driver), then the demo, the CUDA
# samples, the behaviour suites on the CUDA backend, the fault-latency floor, the demo under
# uhmm-prof, and last the performance table (bench/uhmm_bench: cudaMallocManaged vs uhmm, same
# process; docs/PERFORMANCE.md). Every step has a time budget; a step that overruns is killed
# (timeout -k) and reported TIMEOUT with its budget, and the remaining steps still run.
#
#   bench/gpu.sh build          configure and build build/gpu (preset gpu: Release, no debug info)
#                               and copy the shared libraries a bare GPU machine lacks (Abseil,
#                               hwloc, ...) into build/gpu/lib; it stays carryable (< 64 MiB).
#   bench/gpu.sh run            on the GPU machine (no apt, no network): every check, <= 8 min.
#   bench/gpu.sh run quick      demo, vector_add, the migrate suite, the fault-latency sample and
#                               floor, and 3 benchmark rows at 256 MiB: <= 3 min.
#   bench/gpu.sh [all]          build, then run, on a machine that has the GPU and the dependencies.
#   ... --emulated              the same run without a GPU, against the emulated CUDA driver
#                               (tests/fake_cuda): the suites in their cuda_emulated configuration,
#                               the demo, the fault-latency floor and uhmm-prof on the CUDA backend
#                               really run; what launches kernels or needs cudaMallocManaged (the
#                               samples, the GPU table of uhmm_bench) is reported SKIP with the
#                               reason, and the bench step runs uhmm_bench's host table instead
#                               (64 MiB, 30 s; in quick, the host rows of the quick row filter).
#                               Every tree that has the CUDA backend has the emulated driver: no
#                               extra build (bench/gpu.sh all --emulated builds build/gpu first).
#                               CI (tools/test.sh release) runs it on build/release.
#
# Environment:
#   UHMM_GPU_BUILD   the tree `run` uses (default build/gpu); CI points it at build/release.
#   OUT              when set, gpu-summary.md, gpu-logs.tar.gz (every log, the trace, the plot)
#                    and demo-faults.svg go there, rewritten after every step so that a run cut
#                    short still leaves them; else gpu-summary.md and gpu-logs/ stay in the tree.
#   UHMM_BENCH_MIB, UHMM_BENCH_REPS   size and repetitions of the bench (full: 1024 and 3).
#   UHMM_GPU_BUDGET_PCT   scales every budget and the deadline (default 100; 200 on a machine
#                    twice as slow; the lease limits above hold at 100 only).
#
# Budgets in seconds on a GPU (the whole run also has a deadline, counted from the start of the
# preflight; a step never gets more than what is left of it, and one that cannot get 5 s is
# reported SKIP):
#   step                                              full   quick
#   preflight (uhmm_uffd_check, nvidia-smi, CUPTI)      10      10
#   demo: uhmm_demo on the CUDA backend                 20      20
#   sample: vector_add                                  20      20
#   suite: migrate_test                                 40      40
#   suite: concurrency_test                             40       -
#   suite: process_test (two 15 s fork races)           60       -
#   suite: bad_input_test                               20       -
#   sample: stencil                                     20       -
#   sample: oversubscribe                               30       -
#   sample: cg_multi_gpu (every GPU the machine has)    15       -
#   sample: uvm_unmodified (CUDA's managed memory)      20       -
#   sample: uvm_unmodified under uhmm-run               30       -
#   python: torch_uhmm (PyTorch on uhmm)                30       -
#   python: cupy_uhmm (CuPy on uhmm)                    30       -
#   sample: fault_latency                               20      20 (256 MiB)
#   fault floor: uhmm_fault_latency --backend cuda      20      20
#   uhmm-prof: the demo recorded and reported           20       -
#   bench: uhmm_bench                                  130      35 (3 rows, 256 MiB)
#   deadline (sum of the budgets)                      575     165
# A killed step gets 5 s between SIGTERM and SIGKILL, and the script stops waiting for it 8 s
# after its budget even when it cannot be killed (a process stuck in the driver): the worst case is
# the deadline + 8 s, 9.7 min (full) and 2.9 min (quick).
#
# Exit status: 0 every check passed (SKIPs only where the emulated driver cannot run a step);
# 1 a check failed, timed out or was left out for lack of time; 2 usage, or the tree is not built;
# 3 this machine cannot run uhmm at all (no userfaultfd, no UFFD_FEATURE_MINOR_SHMEM, kernel older
# than 5.14) or, without --emulated, has no NVIDIA driver: the summary says why, nothing else runs.
#
# With the device tool: `bench/gpu.sh build` here, then `bench/gpu.sh run quick` or
# `bench/gpu.sh run` there with carry=["build/gpu"] and timeout_s >= 240 (quick) or 590 (full).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

usage() {
  echo "usage: bench/gpu.sh [build|run|all] [quick] [--emulated]" >&2
  exit 2
}

mode="" quick=0 emulated=0
for arg in "$@"; do
  case "$arg" in
    build|run|all) [[ -z "$mode" ]] || usage; mode="$arg" ;;
    quick|--quick) quick=1 ;;
    --emulated) emulated=1 ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) usage ;;
  esac
done
mode="${mode:-all}"
B="${UHMM_GPU_BUILD:-build/gpu}"
B="${B%/}"
pct="${UHMM_GPU_BUDGET_PCT:-100}"
[[ "$pct" =~ ^[1-9][0-9]*$ ]] || { echo "bench/gpu.sh: UHMM_GPU_BUDGET_PCT must be a positive integer" >&2; exit 2; }

# ------------------------------------------------------------------------------------------------
# build

build() {
  if [[ "$B" != build/gpu ]]; then
    echo "bench/gpu.sh: UHMM_GPU_BUILD=$B: build only makes build/gpu; build $B where it comes from" >&2
    return 2
  fi
  cmake --preset gpu >/dev/null || return 1
  cmake --build --preset gpu -j "${UHMM_BUILD_JOBS:-$(nproc)}" || return 1
  mkdir -p "$B/lib" || return 1
  # Every non-system library the binaries load, resolved here, so the GPU machine needs only libc,
  # libstdc++ and the NVIDIA driver.
  local bin
  for bin in "$B"/tests/*_test "$B"/samples/uhmm_demo "$B"/samples/cuda/uhmm_cuda_* "$B"/bench/uhmm_bench \
             "$B"/bench/uhmm_fault_latency "$B"/tools/uhmm_prof/uhmm-prof "$B"/runtime/libuhmm.so \
             "$B"/lib/uhmm-cuda/libcuda.so.1; do
    [[ -e "$bin" ]] || continue
    ldd "$bin" | awk '/=> \// {print $3}' | grep -E 'libabsl|libgtest|libgmock|libhwloc|libudev' || true
  done | sort -u | xargs -r -I{} cp -L {} "$B/lib/" || return 1
  strip --strip-unneeded "$B"/lib/*.so* "$B"/runtime/libuhmm.so* 2>/dev/null
  local kib
  kib=$(du -sk "$B" | cut -f1)
  echo "bench/gpu.sh: $B is ready to carry ($((kib / 1024)) MiB)"
  if (( kib > 60 * 1024 )); then
    echo "bench/gpu.sh: warning: $B is over 60 MiB; the device tool carries at most 64 MiB in all" >&2
  fi
}

# ------------------------------------------------------------------------------------------------
# run: helpers

now_us() {
  if [[ -n "${EPOCHREALTIME:-}" ]]; then echo "${EPOCHREALTIME/[.,]/}"; else echo $(( $(date +%s%N) / 1000 )); fi
}
secs() { awk -v us="$1" 'BEGIN { printf "%.1f", us / 1e6 }'; }  # microseconds -> "12.3"

T0=$(now_us)  # reset when run starts
elapsed_s() { echo $(( ($(now_us) - T0) / 1000000 )); }

# One row per step, for the console and the summary.
names=() verdicts=() walls=() budgets=() details=() logfiles=()
failed=0
machine_lines=()   # what the preflight found, for the summary
stopped=""         # set when the preflight stops the run

# Appends a result row and prints it; SKIP rows count as failures unless $7 is "expected".
record() {  # name verdict wall budget detail log [expected-skip]
  names+=("$1") verdicts+=("$2") walls+=("$3") budgets+=("$4") details+=("$5") logfiles+=("$6")
  case "$2" in
    PASS) ;;
    SKIP) [[ "${7:-}" == expected ]] || failed=1 ;;
    *) failed=1 ;;
  esac
  printf '[%2d] %-8s %6s s  (budget %3s s)  %s: %s\n' "${#names[@]}" "$2" "$3" "$4" "$1" "$5"
}

# The gtest outcome of a suite log: "N passed, M failed, K skipped" plus what failed or ran last.
gtest_counts() {
  local log="$1" passed failed_n skipped
  passed=$(grep -c '^\[       OK \]' "$log")
  failed_n=$(grep -c '^\[  FAILED  \] [A-Za-z].*([0-9]* ms)' "$log")
  skipped=$(grep -c '^\[  SKIPPED \] [A-Za-z].*([0-9]* ms)' "$log")
  echo "$passed $failed_n $skipped"
}
gtest_failed_names() {
  grep -E '^\[  FAILED  \] [A-Za-z].*\([0-9]+ ms\)' "$1" | awk '{print $4}' | head -3 | paste -sd, -
}
gtest_running() {  # the test that had started and not finished when the log ends
  awk '/^\[ RUN      \]/ {t = $4; open = 1} /^\[ +(OK|FAILED|SKIPPED) +\]/ {open = 0} END {if (open) print t}' "$1"
}
last_line() {  # the last PASS/FAIL/SKIP line of a log, else its last non-empty line
  local l
  l=$(grep -E '^(PASS|FAIL|SKIP)' "$1" | tail -1)
  [[ -n "$l" ]] || l=$(grep -v '^[[:space:]]*$' "$1" | tail -1)
  printf '%s' "${l:0:200}" | tr '|' '/'
}

# step NAME BUDGET KIND -- COMMAND...
# KIND: gtest (a suite), sample (exit 77 = skipped), bench (uhmm_bench), floor (uhmm_fault_latency),
# prof (uhmm-prof record + report), plain (exit 0 = pass). Runs COMMAND under
# `timeout -k 5 BUDGET` (less when the deadline is nearer), logs to $logs/NN-slug.log, records the
# verdict and rewrites the summary.
step() {
  local name="$1" budget=$(( $2 * pct / 100 )) kind="$3"
  shift 3
  (( budget < 1 )) && budget=1
  [[ "$1" == -- ]] && shift
  local n=$(( ${#names[@]} + 1 ))
  local slug
  slug=$(printf '%02d-%s' "$n" "$(echo "$name" | tr -c 'A-Za-z0-9_.-' '_' | sed 's/__*/_/g; s/_$//' | cut -c1-48)")
  local log="$logs/$slug.log"
  local left=$(( deadline - $(elapsed_s) ))
  if (( left < 5 )); then
    : >"$log"
    record "$name" SKIP 0.0 "$budget" "not run: the run's ${deadline} s deadline is spent" "$log"
    publish
    return
  fi
  (( budget > left )) && budget=$left
  local start rc stuck=0
  start=$(now_us)
  timeout -k 5 "$budget" "$@" >"$log" 2>&1 </dev/null &
  local pid=$!
  # Wait, but never longer than budget + 8 s: a process in uninterruptible sleep in the driver
  # survives SIGKILL, and timeout waits for it.
  local cap=$(( start + (budget + 8) * 1000000 ))
  while kill -0 "$pid" 2>/dev/null; do
    if (( $(now_us) > cap )); then stuck=1; break; fi
    sleep 0.1
  done
  if (( stuck )); then
    rc=137
  else
    wait "$pid"
    rc=$?
  fi
  local wall
  wall=$(secs $(( $(now_us) - start )))
  local verdict detail
  if (( rc == 124 || rc == 137 )); then
    verdict=TIMEOUT
    detail="killed after its ${budget} s budget"
    (( stuck )) && detail="did not exit ${budget} s + 8 s in, even after SIGKILL (stuck in the kernel or driver?)"
    if [[ "$kind" == gtest ]]; then
      local c running
      read -r -a c <<<"$(gtest_counts "$log")"
      running=$(gtest_running "$log")
      detail+="; ${c[0]} passed, ${c[1]} failed, ${c[2]} skipped before it${running:+; running: $running}"
    elif [[ -s "$log" ]]; then
      detail+="; last output: $(last_line "$log")"
    fi
    record "$name" "$verdict" "$wall" "$budget" "$detail" "$log"
    publish
    return
  fi
  case "$kind" in
    gtest)
      local c
      read -r -a c <<<"$(gtest_counts "$log")"
      detail="${c[0]} passed, ${c[1]} failed, ${c[2]} skipped"
      if (( rc == 0 && c[0] > 0 )); then
        verdict=PASS
      else
        verdict=FAIL
        local names_failed why
        names_failed=$(gtest_failed_names "$log")
        [[ -n "$names_failed" ]] && detail+="; failed: $names_failed"
        (( rc != 0 )) && detail+="; exit $rc"
        local running
        running=$(gtest_running "$log")
        [[ -n "$running" ]] && detail+="; ended inside $running"
        if (( c[0] == 0 )); then
          why=$(grep -h -m1 -o 'backend [a-z_]* unavailable: .*' "$log" | head -1)
          detail+="; nothing passed${why:+: ${why:0:200}}"
        fi
      fi
      ;;
    sample)
      detail=$(last_line "$log")
      if (( rc == 0 )); then
        verdict=PASS
      elif (( rc == 77 )); then
        # Skipped by the sample itself: on a GPU machine that means the GPU was not usable.
        verdict=FAIL
        detail="skipped on the GPU machine: $detail"
      else
        verdict=FAIL
        detail+="; exit $rc"
      fi
      ;;
    bench)
      # uhmm_bench exits 0 when the GPU table could not be measured at all: on a GPU machine that
      # is a failure. Its data checks make the exit status 1.
      local nrows
      nrows=$(grep '^| [a-z]' "$log" | grep -vc '^| metric |')
      detail="$nrows rows"
      if grep -q '^GPU table: NOT MEASURED' "$log" && (( ! emulated )); then
        verdict=FAIL
        detail=$(grep -m1 '^GPU table: NOT MEASURED' "$log" | cut -c1-200)
      elif (( rc == 0 && nrows > 0 )); then
        verdict=PASS
        detail+=$(grep '^| [a-z]' "$log" | grep -v '^| metric |' | awk -F'|' '
          {gsub(/ /, "", $5); gsub(/ /, "", $8)}
          $5 == "—" {missing++} $8 == "yes" {met++} $8 == "yes" || $8 == "NO" {goals++}
          END {if (goals) printf ", goal met in %d of %d", met, goals
               if (missing) printf ", %d without a uhmm value (see the notes)", missing}')
        detail+=", every word checked ok"
      else
        verdict=FAIL
        detail+="; $(last_line "$log"); exit $rc"
      fi
      ;;
    prof)
      detail=$(last_line "$log")
      if (( rc == 0 )); then
        verdict=PASS
        detail=$(awk '/^  end to end/ {printf "%s faults, end to end p50 %s us, p99 %s us", $4, $5, $7}' "$log")
        [[ -n "$detail" ]] || detail="no CPU fault recorded"
      else
        verdict=FAIL
        detail+="; exit $rc"
      fi
      ;;
    floor)
      detail=$(last_line "$log")
      if (( rc == 0 )); then
        verdict=PASS
        detail=$(awk '/back to back/ && /^bare/ {b = $(NF - 1)} /back to back/ && /^uhmm/ {u = $(NF - 1)}
                      END {printf "back to back, p50: uhmm %s us, bare uffd %s us", u, b}' "$log")
      else
        verdict=FAIL
        detail+="; exit $rc"
      fi
      ;;
    *)
      detail=$(last_line "$log")
      if (( rc == 0 )); then verdict=PASS; else verdict=FAIL; detail+="; exit $rc"; fi
      ;;
  esac
  record "$name" "$verdict" "$wall" "$budget" "$detail" "$log"
  publish
}

# A step that cannot run here, with the reason.
skip_step() {  # name budget reason
  record "$1" SKIP 0.0 "$(( $2 * pct / 100 ))" "$3" "" expected
  publish
}

# The first log whose name matches the glob pattern $1 (e.g. '*uhmm_bench*'), or nothing.
first_log() {
  local f
  for f in "$logs"/$1.log; do
    [[ -e "$f" ]] && { echo "$f"; return; }
  done
}

# The markdown table lines (and their title and notes) of a uhmm_bench log.
bench_tables() {
  awk '/^(GPU|Host backend)/ {print; print ""; next}
       /^\|/ {print; next}
       /^- / {print; next}
       /^(GPU table: NOT MEASURED|FAIL:|GPU: )/ {print ""; print; next}' "$1"
}

# Writes the summary (and, with $OUT, the log tarball and the plot): after every step.
publish() {
  local tmp="$summary.tmp"
  {
    echo "# uhmm GPU check: $run_kind"
    echo
    echo "- date: $(date -u '+%F %T') UTC; command: \`bench/gpu.sh ${cmdline}\`; tree: $B; commit: $commit"
    echo "- wall time so far: $(elapsed_s) s of a ${deadline} s deadline"
    if [[ -n "$stopped" ]]; then
      echo
      echo "**STOPPED: $stopped**"
    fi
    echo
    echo "## Machine"
    echo
    printf -- '- %s\n' "${machine_lines[@]}"
    if [[ -s "$logs/00-preflight.log" ]]; then
      echo
      echo '```'
      cat "$logs/00-preflight.log"
      echo '```'
    fi
    echo
    echo "## Checks"
    echo
    echo "| # | check | verdict | wall s | budget s | detail |"
    echo "|---|---|---|---|---|---|"
    local i
    for i in "${!names[@]}"; do
      echo "| $((i + 1)) | ${names[$i]} | ${verdicts[$i]} | ${walls[$i]} | ${budgets[$i]} | ${details[$i]//|//} |"
    done
    local pass=0 fail=0 timeout=0 skip=0 v
    for v in "${verdicts[@]}"; do
      case "$v" in PASS) ((pass++));; FAIL) ((fail++));; TIMEOUT) ((timeout++));; SKIP) ((skip++));; esac
    done
    echo
    echo "$pass passed, $fail failed, $timeout timed out, $skip skipped."
    local f
    f=$(first_log '*uhmm_bench*')
    if [[ -n "$f" && -s "$f" ]]; then
      echo
      echo "## Benchmark table (uhmm_bench)"
      echo
      bench_tables "$f"
      if ! grep -q '^|' "$f"; then
        echo "Rows measured before it ended:"
        echo
        grep '^uhmm_bench: row done' "$f" | sed 's/^uhmm_bench: row done: /- /'
      fi
    fi
    f=$(first_log '*demo_uhmm_demo*')
    if [[ -n "$f" && -s "$f" ]]; then
      echo
      echo "## Demo (uhmm_demo on the CUDA backend)"
      echo
      echo '```'
      head -12 "$f"
      echo '```'
    fi
    f=$(first_log '*fault_floor*')
    if [[ -n "$f" && -s "$f" ]]; then
      echo
      echo "## Fault latency: bare userfaultfd floor vs uhmm (uhmm_fault_latency)"
      echo
      echo '```'
      head -20 "$f"
      echo '```'
    fi
    for f in "$logs"/*sample*.log; do
      if [[ ! -s "$f" ]] || ! grep -q '^|' "$f"; then continue; fi
      echo
      echo "## $(basename "$f" .log | sed 's/^[0-9]*-//')"
      echo
      grep -E '^\||ratio|/ UVM|UVM p50' "$f" | head -20
    done
    f=$(first_log '*uhmm-prof*')
    if [[ -n "$f" ]] && grep -q '^CPU fault latency' "$f"; then
      echo
      echo "## uhmm-prof: the demo's CPU faults per phase"
      echo
      echo '```'
      sed -n '/^CPU fault latency/,/^$/p' "$f"
      echo '```'
    fi
    local shown=0
    for i in "${!names[@]}"; do
      [[ "${verdicts[$i]}" == FAIL || "${verdicts[$i]}" == TIMEOUT ]] || continue
      [[ -n "${logfiles[$i]}" && -s "${logfiles[$i]}" ]] || continue
      [[ "${logfiles[$i]}" == */00-preflight.log ]] && continue  # shown whole above
      (( shown++ == 0 )) && { echo; echo "## Failures (log excerpts; all logs in gpu-logs)"; }
      echo
      echo "### ${names[$i]}: ${verdicts[$i]}"
      echo
      echo '```'
      if grep -qE 'Failure$|^\[  FAILED  \]' "${logfiles[$i]}"; then
        grep -E 'Failure$|^\[  FAILED  \] [A-Za-z].*\(' -A4 "${logfiles[$i]}" | head -40
      else
        tail -15 "${logfiles[$i]}"
      fi
      echo '```'
    done
  } >"$tmp"
  mv -f "$tmp" "$summary"
  if [[ -n "${OUT:-}" ]]; then
    tar -C "$(dirname "$logs")" -czf "$OUT/gpu-logs.tar.gz.tmp" "$(basename "$logs")" 2>/dev/null
    if (( $(stat -c %s "$OUT/gpu-logs.tar.gz.tmp" 2>/dev/null || echo 0) > 15 * 1024 * 1024 )); then
      tar -C "$(dirname "$logs")" -czf "$OUT/gpu-logs.tar.gz.tmp" --exclude='*.json' --exclude='*.trace' \
        "$(basename "$logs")" 2>/dev/null
    fi
    mv -f "$OUT/gpu-logs.tar.gz.tmp" "$OUT/gpu-logs.tar.gz" 2>/dev/null
    [[ -s "$logs/demo_faults.svg" ]] && cp -f "$logs/demo_faults.svg" "$OUT/demo-faults.svg"
  fi
  return 0
}

# ------------------------------------------------------------------------------------------------
# run: the preflight. What uhmm needs from this machine, before anything else; stops the run
# (exit 3) when it cannot run uhmm at all.

huge_before=""
restore_hugepages() {
  [[ -n "$huge_before" ]] && echo "$huge_before" >/proc/sys/vm/nr_hugepages 2>/dev/null
  huge_before=""
  return 0
}

preflight() {
  local log="$logs/00-preflight.log" start rc
  start=$(now_us)
  echo "---- preflight: what uhmm needs from this machine"
  # The kernel and userfaultfd, by uhmm_uffd_check (bench/uffd_check.c): plain C, no uhmm code.
  if [[ -x "$B/bench/uhmm_uffd_check" ]]; then
    timeout -k 2 8 "$B/bench/uhmm_uffd_check" >"$log" 2>&1
    rc=$?
  else
    echo "kernel: $(uname -sr)" >"$log"
    echo "verdict: CANNOT CHECK: $B/bench/uhmm_uffd_check is missing (rebuild the tree)" >>"$log"
    rc=2
  fi
  cat "$log"
  machine_lines+=("kernel: $(uname -r) ($(uname -m)), $(nproc) CPUs, $(awk '/^MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo) memory, uid $(id -u)")
  machine_lines+=("userfaultfd: $(grep -m1 '^userfaultfd:' "$log" | cut -d' ' -f2-); features $(grep -m1 '^userfaultfd features:' "$log" | awk '{print $3}'); $(grep -m1 '^minor fault round trip' "$log" || echo 'round trip not tried'); vm.unprivileged_userfaultfd=$(cat /proc/sys/vm/unprivileged_userfaultfd 2>/dev/null || echo n/a)")
  local huge
  huge=$(awk '/^HugePages_Total/ {t = $2} /^HugePages_Free/ {f = $2} /^Hugepagesize/ {s = $2 " " $3}
              END {printf "%s total, %s free, %s each", t, f, s}' /proc/meminfo)
  echo "hugepages: $huge"
  machine_lines+=("hugepages: $huge")

  if (( emulated )); then
    echo "gpu: not used (emulated CUDA driver: $fake)"
    machine_lines+=("gpu: none used; emulated CUDA driver $fake")
    if command -v nvidia-smi >/dev/null 2>&1; then
      machine_lines+=("nvidia-smi here: $(timeout 10 nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>&1 | head -1)")
    fi
    echo "cupti: not used (the emulated driver has no CUPTI; transparent launches off)"
    machine_lines+=("cupti: not used (emulated driver; UHMM_TRANSPARENT_LAUNCH=0)")
  else
    local smi
    if ! smi=$(timeout 15 nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap \
                 --format=csv,noheader 2>&1 | head -1) || [[ -z "$smi" ]]; then
      # Drivers older than compute_cap in --query-gpu, or no nvidia-smi at all.
      smi=$(timeout 15 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 |
            head -1) || smi="nvidia-smi failed or is missing: ${smi:0:160}"
    fi
    echo "gpu: $smi"
    machine_lines+=("gpu: $smi")
    local libcuda
    libcuda=$(ldconfig -p 2>/dev/null | awk '/libcuda\.so\.1 / {print $NF; exit}')
    if [[ -z "$libcuda" ]]; then
      local dirs d
      IFS=: read -r -a dirs <<<"$LD_LIBRARY_PATH"
      for d in "${dirs[@]}"; do
        [[ -n "$d" && -e "$d/libcuda.so.1" ]] && { libcuda="$d/libcuda.so.1"; break; }
      done
    fi
    echo "libcuda: ${libcuda:-not found}"
    machine_lines+=("libcuda: ${libcuda:-not found}")
    echo "cupti: ${UHMM_CUPTI_LIBRARY:-not found (transparent launches off; samples sync explicitly)}"
    machine_lines+=("cupti: ${UHMM_CUPTI_LIBRARY:-not found: transparent launches off}")
    if [[ -z "$libcuda" ]] && (( rc == 0 )); then
      rc=3
      echo "verdict: CANNOT RUN THE GPU CHECK: no NVIDIA driver (libcuda.so.1) on this machine; use --emulated" >>"$log"
      echo "verdict: CANNOT RUN THE GPU CHECK: no NVIDIA driver (libcuda.so.1) on this machine; use --emulated"
    fi
  fi
  local wall
  wall=$(secs $(( $(now_us) - start )))
  if (( rc != 0 )); then
    stopped="$(grep '^verdict: ' "$log" | tail -1 | sed 's/^verdict: //'). Nothing else was run."
    [[ -n "$stopped" ]] || stopped="the preflight check failed (exit $rc). Nothing else was run."
    record "preflight: kernel, userfaultfd, driver" FAIL "$wall" 10 "$stopped" "$log"
    publish
    echo
    echo "bench/gpu.sh: STOPPED: $stopped"
    echo "bench/gpu.sh: summary in $summary"
    (( rc == 2 )) && exit 2
    exit 3
  fi
  record "preflight: kernel, userfaultfd, driver" PASS "$wall" 10 \
    "$(grep -m1 '^userfaultfd features' "$log" | sed 's/userfaultfd //'), MINOR_SHMEM round trip ok" "$log"
  publish
}

# ------------------------------------------------------------------------------------------------
# run

run() {
  if [[ ! -x "$B/tests/migrate_test" || ! -x "$B/samples/uhmm_demo" ]]; then
    echo "bench/gpu.sh: $B is not built; run 'bench/gpu.sh build' first (or set UHMM_GPU_BUILD)" >&2
    exit 2
  fi
  T0=$(now_us)
  fake="$PWD/$B/tests/libuhmm_fake_cuda_driver.so"
  if (( emulated )) && [[ ! -f "$fake" ]]; then
    echo "bench/gpu.sh: $B has no emulated CUDA driver ($fake): it was built without the CUDA toolkit" >&2
    exit 2
  fi
  export LD_LIBRARY_PATH="$PWD/$B/lib:$PWD/$B/runtime${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  logs="$PWD/$B/gpu-logs"
  summary="${OUT:-$PWD/$B}/gpu-summary.md"
  rm -rf "$logs"
  mkdir -p "$logs" "$(dirname "$summary")"
  cmdline="$*"
  commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
  local q="full"
  (( quick )) && q="quick"
  if (( emulated )); then
    run_kind="$q, emulated CUDA driver (tests/fake_cuda), no GPU"
    unset UHMM_CUPTI_LIBRARY
  else
    run_kind="$q, real GPU"
    # The driver may live only under /usr/local/nvidia (containers, microVMs).
    local d
    for d in /usr/local/nvidia/lib64 /usr/local/nvidia/lib; do
      [[ -e "$d/libcuda.so.1" && ":$LD_LIBRARY_PATH:" != *":$d:"* ]] && LD_LIBRARY_PATH+=":$d"
    done
    command -v nvidia-smi >/dev/null 2>&1 || PATH+=":/usr/local/nvidia/bin"
    # Transparent launches need CUPTI: the usual toolkit folders first, then anywhere.
    if [[ -z "${UHMM_CUPTI_LIBRARY:-}" ]]; then
      local cupti="" c
      for c in /usr/local/cuda/extras/CUPTI/lib64/libcupti.so* /usr/local/cuda/lib64/libcupti.so* \
               /usr/local/cuda/targets/*/lib/libcupti.so*; do
        [[ -e "$c" ]] && { cupti="$c"; break; }
      done
      [[ -z "$cupti" ]] && cupti=$(timeout 10 find /usr/local /opt /usr/lib -maxdepth 6 -name 'libcupti.so*' \
                                   2>/dev/null | sort | head -1)
      [[ -n "$cupti" ]] && export UHMM_CUPTI_LIBRARY="$cupti"
    fi
  fi
  if (( quick )); then deadline=165; else deadline=575; fi
  deadline=$(( deadline * pct / 100 ))
  echo "bench/gpu.sh: run $run_kind; tree $B; deadline $deadline s; summary $summary"

  preflight

  # uhmm_env: the CUDA backend for the demo, uhmm-prof and the fault floor. The suites choose their
  # configuration themselves from UHMM_TEST_BACKEND (cuda-emulated: the emulated driver, transparent
  # launches off, in the tests that want the CUDA backend only; see tests/test_util.h).
  local backend=cuda suite_env=(env UHMM_TEST_BACKEND=cuda) uhmm_env=(env UHMM_BACKEND=cuda) no_gpu=""
  if (( emulated )); then
    backend=cuda-emulated
    suite_env=(env UHMM_TEST_BACKEND=cuda-emulated)
    uhmm_env=(env UHMM_BACKEND=cuda "UHMM_CUDA_DRIVER=$fake" UHMM_TRANSPARENT_LAUNCH=0)
    no_gpu="needs a real GPU: it launches CUDA kernels, which the emulated driver cannot run"
  fi
  local prof="$B/tools/uhmm_prof/uhmm-prof"

  echo
  echo "---- checks"
  step "demo: uhmm_demo ($backend)" 20 plain -- "${uhmm_env[@]}" "$B/samples/uhmm_demo"
  if (( emulated )); then skip_step "sample: vector_add" 20 "$no_gpu"
  else step "sample: vector_add" 20 sample -- "$B/samples/cuda/uhmm_cuda_vector_add"; fi
  if (( quick )); then
    step "suite: migrate_test ($backend)" 40 gtest -- "${suite_env[@]}" "$B/tests/migrate_test" --gtest_color=no
  else
    step "suite: migrate_test ($backend)" 40 gtest -- "${suite_env[@]}" "$B/tests/migrate_test" --gtest_color=no
    step "suite: concurrency_test ($backend)" 40 gtest -- "${suite_env[@]}" "$B/tests/concurrency_test" --gtest_color=no
    step "suite: process_test ($backend)" 60 gtest -- "${suite_env[@]}" "$B/tests/process_test" --gtest_color=no
    step "suite: bad_input_test ($backend)" 20 gtest -- "${suite_env[@]}" "$B/tests/bad_input_test" --gtest_color=no
    if (( emulated )); then
      skip_step "sample: stencil" 20 "$no_gpu"
      skip_step "sample: oversubscribe" 30 "$no_gpu"
      skip_step "sample: cg_multi_gpu" 15 "$no_gpu"
    else
      step "sample: stencil" 20 sample -- "$B/samples/cuda/uhmm_cuda_stencil"
      step "sample: oversubscribe" 30 sample -- "$B/samples/cuda/uhmm_cuda_oversubscribe"
      # Every GPU of the machine in one runtime (with one GPU: the multi-device code must change
      # nothing for it).
      step "sample: cg_multi_gpu" 15 sample -- "$B/samples/cuda/uhmm_cuda_cg_multi_gpu"
    fi
    # One program written only for CUDA Unified Memory, on the driver's managed memory and on uhmm's
    # (uhmm-run): both must PASS; their times side by side.
    if (( emulated )); then
      skip_step "sample: uvm_unmodified (CUDA's managed memory)" 20 "$no_gpu"
      skip_step "sample: uvm_unmodified under uhmm-run" 30 "$no_gpu"
    else
      step "sample: uvm_unmodified (CUDA's managed memory)" 20 sample -- "$B/samples/cuda/uhmm_cuda_uvm_unmodified"
      step "sample: uvm_unmodified under uhmm-run" 30 sample -- "$B/bin/uhmm-run" --stats -- \
        "$B/samples/cuda/uhmm_cuda_uvm_unmodified"
    fi
    # PyTorch and CuPy on uhmm memory (the framework allocator library), where python3 has them.
    local fw="UHMM_FRAMEWORK_ALLOC=$PWD/$B/lib/libuhmm_framework_alloc.so" py
    for py in torch cupy; do
      if (( emulated )); then
        skip_step "python: ${py}_uhmm" 30 "$no_gpu"
      elif ! python3 -c "import $py" >/dev/null 2>&1; then
        skip_step "python: ${py}_uhmm" 30 "python3 has no $py module here"
      else
        step "python: ${py}_uhmm" 30 sample -- env "$fw" python3 "samples/python/${py}_uhmm.py"
      fi
    done
  fi
  if (( emulated )); then
    skip_step "sample: fault_latency" 20 "$no_gpu; the CUDA-backend fault path runs in the fault floor step"
  elif (( quick )); then
    step "sample: fault_latency (256 MiB)" 20 sample -- "$B/samples/cuda/uhmm_cuda_fault_latency" 256
  else
    step "sample: fault_latency" 20 sample -- "$B/samples/cuda/uhmm_cuda_fault_latency"
  fi
  # The kernel's own uffd round trip next to uhmm's CPU faults on device pages (CUDA backend).
  step "fault floor: uhmm_fault_latency --backend cuda" 20 floor -- "${uhmm_env[@]}" \
    "$B/bench/uhmm_fault_latency" --backend cuda
  if (( ! quick )); then
    # Where a fault's microseconds go: the demo under uhmm-prof, report, plot and Chrome trace.
    # shellcheck disable=SC2016  # expanded by the inner bash
    step "uhmm-prof: demo ($backend)" 20 prof -- "${uhmm_env[@]}" bash -c \
      '"$1" record -o "$2/demo.trace" -- "$3" && "$1" report "$2/demo.trace" --plot "$2/demo_faults.svg" --chrome "$2/demo_trace.json"' \
      _ "$prof" "$logs" "$B/samples/uhmm_demo"
  fi

  # The performance table, last.
  local mib="${UHMM_BENCH_MIB:-1024}" reps="${UHMM_BENCH_REPS:-3}"
  local rows="" budget=130
  if (( quick )); then
    mib="${UHMM_BENCH_MIB:-256}" rows="read-back seq, 4K|isolated fault, 4K|prefetch to GPU" budget=35
  fi
  if (( emulated )); then
    skip_step "bench: uhmm_bench GPU table${rows:+ (3 rows)}" "$budget" \
      "needs a real GPU: cudaMallocManaged anchors and kernels on both sides"
    # The same harness and row filter on the host table (host backend), small.
    local host_rows=""
    (( quick )) && host_rows="read-back seq, 4K|isolated fault|prefetch to device"
    step "bench: uhmm_bench host table${host_rows:+ (the quick row filter)}, 64 MiB" 30 bench -- \
      "$B/bench/uhmm_bench" --no-gpu --size 64 --reps 1 ${host_rows:+--only "$host_rows"}
  else
    # The hugetlb row needs 2 MiB hugepages: reserve them when root (the data plus slack) and give
    # them back afterwards (also when the script is interrupted).
    if (( ! quick )) && [[ $(id -u) -eq 0 && -w /proc/sys/vm/nr_hugepages ]]; then
      local need=$(( mib / 2 + 64 )) free_now
      huge_before=$(cat /proc/sys/vm/nr_hugepages)
      free_now=$(cat /sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages 2>/dev/null || echo 0)
      if (( free_now < need )); then
        echo $(( huge_before + need - free_now )) >/proc/sys/vm/nr_hugepages 2>/dev/null
      else
        huge_before=""
      fi
    fi
    step "bench: uhmm_bench${rows:+ (3 rows)}, $mib MiB, $reps reps" "$budget" bench -- \
      "$B/bench/uhmm_bench" --no-host --size "$mib" --reps "$reps" ${rows:+--only "$rows"}
    restore_hugepages
  fi

  publish
  local f
  f=$(first_log '*uhmm_bench*')
  if [[ -n "$f" ]]; then
    echo
    echo "---- uhmm_bench"
    bench_tables "$f"
  fi
  echo
  echo "| # | check | verdict | wall s | budget s |"
  echo "|---|---|---|---|---|"
  local i
  for i in "${!names[@]}"; do
    echo "| $((i + 1)) | ${names[$i]} | ${verdicts[$i]} | ${walls[$i]} | ${budgets[$i]} |"
  done
  echo
  local verdict=PASS
  (( failed )) && verdict=FAIL
  echo "bench/gpu.sh: $verdict in $(secs $(( $(now_us) - T0 ))) s ($run_kind); summary: $summary${OUT:+, logs: $OUT/gpu-logs.tar.gz}"
  return "$failed"
}

trap restore_hugepages EXIT
case "$mode" in
  build) build ;;
  run) run "$@" ;;
  all) build && run "$@" ;;
esac
