#!/usr/bin/env bash
# Installs the Debian packages uhmm builds and tests with. Idempotent: installs only what is
# missing. Runs apt-get through sudo when not root.
set -euo pipefail

pkgs=(
  build-essential cmake ninja-build pkg-config   # toolchain
  libabsl-dev                                    # runtime dependency
  libhwloc-dev                                   # topology-aware placement (performance issue)
  libze-dev libze1                               # Level Zero loader and headers
  llvm-spirv-14                                  # SPIR-V kernel of the Level Zero sample (with clang)
  python3                                        # generates the emulated Level Zero driver's tables and the CUDA interposer's forwarders
  googletest libgtest-dev                        # tests
  clang libclang-rt-14-dev                       # the tsan preset
  clang-format-14                                # tools/format.sh (CI checks the formatting)
)

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "uhmm setup: all packages present"
  exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "uhmm setup: installing ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "uhmm setup: done"
