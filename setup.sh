#!/usr/bin/env bash
# Installs the Debian 12 packages moe-ep needs. Safe to run again: packages already present are left
# alone. Runs as root, or through sudo otherwise. Installs with --no-install-recommends, so every
# package a build step or script needs is named here, also those a dependency only recommends
# (.ci/check_packages.sh proves the list against what the build really reads).
#   ./setup.sh           building and testing (the two README commands)
#   ./setup.sh --python  also the PyTorch side: apps/torch_baseline.py, the Python module moe_ep
#   ./setup.sh --study   also matplotlib, for moe-sweep's plots
#   ./setup.sh --fuzz    also clang 14 and its libFuzzer/sanitizer runtime (the "fuzz" preset)
#   ./setup.sh --all     all of the above (what CI installs)
#   ./setup.sh --list [OPTIONS]  print the package names that OPTIONS select, install nothing
set -euo pipefail

base=(
  build-essential cmake ninja-build
  pkgconf                             # CMake's FindMPI asks pkg-config first when it is there
  openmpi-bin libopenmpi-dev          # the communicator
  libdnnl-dev                         # oneDNN: host GEMMs
  ocl-icd-opencl-dev                  # Debian's oneDNN CMake config requires OpenCL (only recommended)
  libboost-program-options-dev        # command lines of the programs
  nlohmann-json3-dev                  # safetensors headers, JSON output
  zlib1g-dev                          # CRC-32 of checkpoint files
  catch2                              # tests
  iproute2                            # multi-host tests: network namespaces, veth, tc
)
python=(
  python3-torch                       # apps/torch_baseline.py and the moe_ep module
  libopenblas0-pthread                # torch falls back to the reference BLAS (~15x slower) without it
  pybind11-dev python3-pybind11 python3-dev  # building the moe_ep module (numpy arrays: no libtorch-dev)
  python3-numpy
)
study=(python3-matplotlib)            # moe-sweep's plots
fuzz=(clang-14 libclang-rt-14-dev)    # libFuzzer targets of tests/fuzz

packages=("${base[@]}")
list_only=0
for option in "$@"; do
  case "$option" in
    --python) packages+=("${python[@]}") ;;
    --study) packages+=("${study[@]}") ;;
    --fuzz) packages+=("${fuzz[@]}") ;;
    --all) packages+=("${python[@]}" "${study[@]}" "${fuzz[@]}") ;;
    --list) list_only=1 ;;
    *) echo "setup: unknown option '$option' (known: --python --study --fuzz --all --list)" >&2; exit 2 ;;
  esac
done
if [ "$list_only" -eq 1 ]; then
  printf '%s\n' "${packages[@]}"
  exit 0
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all ${#packages[@]} packages present"
  exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "setup: not root and no sudo; install: ${missing[*]}" >&2; exit 1; }
  sudo="sudo"
fi
echo "setup: installing ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
