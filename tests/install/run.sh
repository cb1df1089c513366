#!/usr/bin/env bash
# Installs the build tree into a scratch prefix, then builds and runs outside programs against it:
# one through find_package(uhmm) and one (C) through pkg-config.
set -euo pipefail
build="$1"; src="$2"
prefix="$build/install-test/prefix"
rm -rf "$build/install-test"
cmake --install "$build" --prefix "$prefix" >/dev/null
cmake -S "$src/tests/install" -B "$build/install-test/consumer" -G Ninja \
  -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
cmake --build "$build/install-test/consumer" >/dev/null
LD_LIBRARY_PATH="$prefix/lib:${LD_LIBRARY_PATH:-}" "$build/install-test/consumer/consumer"
export PKG_CONFIG_PATH="$prefix/lib/pkgconfig"
cc $(pkg-config --cflags uhmm) "$src/samples/c_api_demo.c" -o "$build/install-test/c_demo" \
  $(pkg-config --libs uhmm)
UHMM_BACKEND=host LD_LIBRARY_PATH="$prefix/lib:${LD_LIBRARY_PATH:-}" "$build/install-test/c_demo"
