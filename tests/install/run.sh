#!/usr/bin/env bash
# Installs the build tree into a scratch prefix, then builds and runs outside programs against it:
# through find_package(uhmm) a small consumer and the main demo (samples/demo.cc); through
# pkg-config the C demo and the main demo again. Only installed headers are on their include path.
set -euo pipefail
build="$1"; src="$2"
prefix="$build/install-test/prefix"
rm -rf "$build/install-test"
cmake --install "$build" --prefix "$prefix" >/dev/null
test -f "$prefix/include/uhmm/testing.h" || { echo "uhmm/testing.h is not installed" >&2; exit 1; }
# The interposing driver library goes to a private folder, never the library directory itself.
if [[ -f "$build/lib/uhmm-cuda/libcuda.so.1" ]]; then
  ls "$prefix"/lib*/uhmm-cuda/libcuda.so.1 >/dev/null 2>&1 || { echo "uhmm-cuda/libcuda.so.1 is not installed" >&2; exit 1; }
  if ls "$prefix"/lib*/libcuda.so* >/dev/null 2>&1; then echo "a libcuda.so is installed in the library directory" >&2; exit 1; fi
  # The installed uhmm-run finds the library and its checker from where it is installed.
  out=$(UHMM_REAL_LIBCUDA=/nonexistent/libcuda.so.1 "$prefix/bin/uhmm-run" --check 2>&1) && rc=0 || rc=$?
  [[ $rc -eq 1 ]] && grep -q "no NVIDIA driver found" <<<"$out" || { echo "installed uhmm-run --check: $out" >&2; exit 1; }
  echo "uhmm-run (installed) --check: $out" | head -1
fi
cmake -S "$src/tests/install" -B "$build/install-test/consumer" -G Ninja \
  -DCMAKE_PREFIX_PATH="$prefix" -DUHMM_SAMPLES_DIR="$src/samples" >/dev/null
cmake --build "$build/install-test/consumer" >/dev/null
export LD_LIBRARY_PATH="$prefix/lib:${LD_LIBRARY_PATH:-}"
"$build/install-test/consumer/consumer"
# The demo on the host backend, 8 MiB: it must rewrite the data on the device (uhmm/testing.h's
# DeviceAccess) and read it all back.
out=$(UHMM_BACKEND=host "$build/install-test/consumer/uhmm_demo" 8)
echo "$out"
grep -q "the device rewrote all" <<<"$out"
grep -q "^PASS" <<<"$out"
export PKG_CONFIG_PATH="$prefix/lib/pkgconfig"
cc $(pkg-config --cflags uhmm) "$src/samples/c_api_demo.c" -o "$build/install-test/c_demo" \
  $(pkg-config --libs uhmm)
UHMM_BACKEND=host "$build/install-test/c_demo"
c++ -std=c++20 $(pkg-config --cflags uhmm) "$src/samples/demo.cc" -o "$build/install-test/demo_pc" \
  $(pkg-config --libs uhmm)
UHMM_BACKEND=host "$build/install-test/demo_pc" 8 | grep -q "^PASS"
echo "demo (pkg-config): PASS"
