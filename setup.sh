#!/usr/bin/env bash
# Installs the Debian 12 packages moe-ep needs to build and test. Safe to run again: packages
# already present are left alone. Runs as root, or through sudo otherwise.
#   ./setup.sh          what building and testing need
#   ./setup.sh --fuzz   also clang 14 and its libFuzzer/sanitizer runtime (the "fuzz" preset, CI)
set -euo pipefail

packages=(
  build-essential cmake ninja-build
  openmpi-bin libopenmpi-dev          # the communicator
  libdnnl-dev                         # oneDNN: host GEMMs
  libboost-program-options-dev        # command lines of the programs
  nlohmann-json3-dev                  # safetensors headers, JSON output
  zlib1g-dev                          # CRC-32 of checkpoint files
  catch2                              # tests
)
if [ "${1:-}" = "--fuzz" ]; then
  packages+=(clang-14 libclang-rt-14-dev)  # libFuzzer targets of tests/fuzz
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
