#!/usr/bin/env bash
# uhmm-run (tools/uhmm_run) in the build tree: --check with no driver and with tests/fake_cuda as
# the driver, a program run through it (one that reaches the driver only by dlopen, as nvcc's static
# runtime does, with --stats and --trace), and bad input.
# Usage: uhmm_run_test.sh BUILD_DIR FAKE_DRIVER UVM_DLOPEN_PROGRAM
set -uo pipefail
build="$1"; fake="$2"; program="$3"
run="$build/bin/uhmm-run"
fail() { echo "FAIL: $*" >&2; exit 1; }

out=$(UHMM_REAL_LIBCUDA=/nonexistent/libcuda.so.1 "$run" --check 2>&1); rc=$?
[[ $rc -eq 1 ]] || fail "--check without a driver exited $rc: $out"
grep -q "no NVIDIA driver found" <<<"$out" || fail "--check without a driver did not say so: $out"
echo "ok: --check without a driver: $out"

out=$(UHMM_REAL_LIBCUDA="$fake" "$run" --check 2>&1); rc=$?
[[ $rc -eq 0 ]] || fail "--check with the emulated driver exited $rc: $out"
grep -q "forwarding to the NVIDIA driver $fake" <<<"$out" || fail "--check did not name the driver: $out"
grep -q "interposer: .*uhmm-cuda/libcuda.so.1" <<<"$out" || fail "--check did not name the interposer: $out"
echo "ok: --check with the emulated driver"

out=$(UHMM_REAL_LIBCUDA=/nonexistent/libcuda.so.1 "$run" true 2>&1); rc=$?
[[ $rc -eq 1 ]] || fail "a run without a driver exited $rc: $out"
[[ $(wc -l <<<"$out") -eq 1 && "$out" == "uhmm-run: "* ]] || fail "a run without a driver did not give one line: $out"
echo "ok: a run without a driver: $out"

out=$(UHMM_REAL_LIBCUDA="$fake" "$run" -- bash -c 'echo "$LD_LIBRARY_PATH"; exit 7' 2>&1); rc=$?
[[ $rc -eq 7 ]] || fail "the program's exit status was not passed on ($rc): $out"
grep -q "uhmm-cuda" <<<"$out" || fail "the program did not get the interposer's folder first: $out"
echo "ok: a program runs with the interposer first on its library path"

trace=$(mktemp -d)/trace.%p
out=$(UHMM_HUGETLB=never UHMM_REAL_LIBCUDA="$fake" "$run" --stats --trace "$trace" -- "$program" 2>&1); rc=$?
[[ $rc -eq 0 ]] || fail "the dlopen program under uhmm-run exited $rc: $out"
grep -q "^ok: " <<<"$out" || fail "the dlopen program did not pass: $out"
grep -q "uhmm stats (backend cuda" <<<"$out" || fail "--stats printed no uhmm counters (managed memory not uhmm's?): $out"
ls "$(dirname "$trace")"/trace.* >/dev/null 2>&1 || fail "--trace wrote no trace file"
echo "ok: a program that dlopens libcuda.so.1 gets uhmm's managed memory, with --stats and --trace"
out=$(UHMM_REAL_LIBCUDA="$fake" "$program" 2>&1); rc=$?
grep -q "uhmm stats" <<<"$out" && fail "without uhmm-run the program still got uhmm"
echo "ok: without uhmm-run the same program does not get uhmm (it exited $rc)"
"$run" --trace >/dev/null 2>&1; rc=$?
[[ $rc -eq 2 ]] || fail "--trace without a file exited $rc"

"$run" --bogus >/dev/null 2>&1; rc=$?
[[ $rc -eq 2 ]] || fail "an unknown option exited $rc"
"$run" >/dev/null 2>&1; rc=$?
[[ $rc -eq 2 ]] || fail "no program exited $rc"
echo "ok: bad input"
