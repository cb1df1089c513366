#!/usr/bin/env bash
# uhmm-run (tools/uhmm_run) in the build tree: --check with no driver and with tests/fake_cuda as
# the driver, a program run through it, and bad input. Usage: uhmm_run_test.sh BUILD_DIR FAKE_DRIVER
set -uo pipefail
build="$1"; fake="$2"
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

"$run" --bogus >/dev/null 2>&1; rc=$?
[[ $rc -eq 2 ]] || fail "an unknown option exited $rc"
"$run" >/dev/null 2>&1; rc=$?
[[ $rc -eq 2 ]] || fail "no program exited $rc"
echo "ok: bad input"
