#!/usr/bin/env bash
# Proves that other projects can use moe-ep, both ways the README names:
#   1. installed package: installs BUILD_DIR into a temporary prefix, then configures, builds and
#      runs tests/package/consumer (find_package(moe_ep CONFIG REQUIRED), moe::runtime) against it;
#   2. subproject: configures, builds and runs tests/package/subproject, which takes this source
#      tree with add_subdirectory, no build type and the programs and tests left off.
# Each consumer runs one forward of a small layer on 1 rank under mpirun and prints a checksum;
# the two checksums must agree. Exits non-zero on any failure; prints each step's time.
#
# Usage: tests/package/check_package.sh BUILD_DIR   (a built moe-ep tree, e.g. build)
# CI runs it as the stage "package" after "build" (.ci/run); the subproject build compiles the
# libraries again, which takes minutes on 2 cores, too long for the CTest suite.
set -euo pipefail

if [[ $# -ne 1 || ! -f $1/CMakeCache.txt ]]; then
  echo "usage: $0 BUILD_DIR (a configured and built moe-ep build directory)" >&2
  exit 2
fi
build=$(cd "$1" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
source_dir=$(cd "$here/../.." && pwd)
jobs=${MOE_PACKAGE_JOBS:-2}
work=$(mktemp -d "${TMPDIR:-/tmp}/moe-package.XXXXXX")
trap 'rm -rf "$work"' EXIT
prefix=$work/prefix

mpirun_flags=(-np 1)
[[ $(id -u) -eq 0 ]] && mpirun_flags+=(--allow-run-as-root)
generator=()
command -v ninja > /dev/null && generator=(-G Ninja)

step() {
  local name=$1 start=$SECONDS
  shift
  echo "check_package: == $name"
  if ! "$@"; then
    echo "check_package: FAILED: $name" >&2
    exit 1
  fi
  echo "check_package: == $name: $((SECONDS - start)) s"
}

# What the package must hold, and what it must not: the warnings target, or a path into this tree
# (the package must be relocatable).
check_install_tree() {
  local config_dir missing=0 file
  config_dir=$(dirname "$(find "$prefix" -name moe_epConfig.cmake -print -quit)")
  [[ $config_dir != . ]] || { echo "no moe_epConfig.cmake under $prefix" >&2; return 1; }
  for file in "$config_dir/moe_epConfigVersion.cmake" "$config_dir/moe_epTargets.cmake" \
              "$prefix/include/moe_ep/moe_config.hpp" \
              "$prefix/include/moe_ep/comm/mpi_communicator.hpp" \
              "$prefix/include/moe_ep/experts/expert_shard.hpp" \
              "$prefix/include/moe_ep/runtime/moe_layer.hpp"; do
    [[ -f $file ]] || { echo "missing from the install: $file" >&2; missing=1; }
  done
  if grep -n "warnings" "$config_dir"/*.cmake >&2; then
    echo "the exported targets mention the warnings target" >&2; missing=1
  fi
  if grep -rn -F "$source_dir" "$config_dir" >&2; then
    echo "the package refers to the source or build tree" >&2; missing=1
  fi
  return $missing
}

# Runs a consumer under mpirun and keeps its output. (Inside `if`, where step calls these
# functions, bash ignores set -e: every check returns its failure explicitly.)
run_consumer() {
  local program=$1 out=$2
  mpirun "${mpirun_flags[@]}" "$program" | tee "$out" || return 1
  grep -q "checksum=" "$out"
}

same_checksum() {
  local a b
  a=$(sed -n 's/.*checksum=\([^ ]*\).*/\1/p' "$work/installed.out")
  b=$(sed -n 's/.*checksum=\([^ ]*\).*/\1/p' "$work/subproject.out")
  echo "installed package $a, subproject $b"
  awk -v a="$a" -v b="$b" 'BEGIN { d = a - b; if (d < 0) d = -d; m = a < 0 ? -a : a;
                                   exit !(d <= 1e-5 * m) }'
}

step install cmake --install "$build" --prefix "$prefix"
step install-tree check_install_tree
step package-configure cmake -S "$here/consumer" -B "$work/consumer" "${generator[@]}" \
  -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_BUILD_TYPE=Release
step package-build cmake --build "$work/consumer" --parallel "$jobs"
step package-run run_consumer "$work/consumer/consumer" "$work/installed.out"
step subproject-configure cmake -S "$here/subproject" -B "$work/subproject" "${generator[@]}" \
  -DMOE_EP_SOURCE_DIR="$source_dir"
step subproject-build cmake --build "$work/subproject" --parallel "$jobs"
step subproject-run run_consumer "$work/subproject/consumer" "$work/subproject.out"
step same-checksum same_checksum
echo "check_package: passed in $SECONDS s"
