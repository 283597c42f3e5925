#!/usr/bin/env bash
# The GPU checks of moe-ep, for a machine with CUDA GPUs (issue 15). Builds the CUDA build, then
# on the GPUs runs, each against its reference:
#   1. the data-path kernels (router, permute, activations) launched with CUDA against the same
#      bodies through the host launcher (test_device_kernels_gpu);
#   2. NcclCommunicator (grouped send/recv, reductions, its watchdog) on 1 GPU and on all GPUs
#      (test_nccl_comm, one rank per GPU);
#   3. the replay suite (every standard case against the float64 reference) on 1 rank and on one
#      rank per GPU, and moe-bench. NOTE: the layer (MoeLayer, moe-replay, moe-bench) does not
#      run on the device path yet: these two still run the host path, as the baseline the device
#      layer must match. The verdict says so.
# Ends with one line: "moe-ep GPU checks: PASS|FAIL|SKIP ...". Exit 0 pass, 1 fail, 77 skip (no
# GPU, or no CUDA toolkit). Budget: under 10 minutes on a machine with a few GPUs.
#   tests/gpu/run_gpu_checks.sh [build-dir]    (default: build-gpu, next to this checkout)
set -u -o pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
build="${1:-$root/build-gpu}"
log="$build/gpu_checks.log"
start=$(date +%s)
failures=()

verdict() {  # status, details
  echo "moe-ep GPU checks: $1 ($2; $(( $(date +%s) - start )) s; log: $log)"
}

if ! command -v nvcc > /dev/null && [ ! -x /usr/local/cuda/bin/nvcc ]; then
  echo "moe-ep GPU checks: SKIP (no CUDA toolkit: nvcc not found)"
  exit 77
fi
if ! command -v nvidia-smi > /dev/null; then
  echo "moe-ep GPU checks: SKIP (no GPU driver: nvidia-smi not found; nothing was built or run)"
  exit 77
fi
gpus=$(nvidia-smi --list-gpus 2> /dev/null | grep -c '^GPU ' || true)
if [ "$gpus" -eq 0 ]; then
  echo "moe-ep GPU checks: SKIP (no GPU: nvidia-smi lists none; nothing was built or run)"
  exit 77
fi

mkdir -p "$build"
: > "$log"
echo "== building the CUDA build in $build ($gpus GPUs)"
if ! { cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMOE_WERROR=ON \
         -DMOE_ENABLE_CUDA=ON && cmake --build "$build"; } >> "$log" 2>&1; then
  verdict FAIL "the CUDA build failed"
  exit 1
fi
if ! grep -q '^#define MOE_HAS_CUDA 1' "$build/generated/moe_config.hpp"; then
  verdict FAIL "the build did not enable CUDA (nvcc or NCCL not found by CMake)"
  exit 1
fi

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
run() {  # name, command...: runs it with a 5-minute bound, records a failure
  local name="$1"
  shift
  echo "== $name"
  if timeout 300 "$@" >> "$log" 2>&1; then
    echo "   passed"
  else
    echo "   FAILED (see $log)"
    failures+=("$name")
  fi
}

run "kernels on the GPU vs the host launcher" "$build/tests/device/test_device_kernels_gpu"
run "NCCL communicator, 1 GPU" mpirun -np 1 "$build/tests/comm/test_nccl_comm" --use-colour no
run "NCCL communicator, $gpus GPUs" mpirun -np "$gpus" "$build/tests/comm/test_nccl_comm" --use-colour no
# A skip inside a test ("moe-ep: skipped:") on a machine with GPUs is a failure here.
if grep -q "moe-ep: skipped:" "$log"; then
  failures+=("a GPU test skipped although nvidia-smi lists $gpus GPUs")
fi
run "replay suite vs the float64 reference, 1 rank (host path)" \
  ctest --test-dir "$build" -R '^replay_(make_cases|matches_reference)_np1$' --output-on-failure
for np in 1 2 4; do
  if [ "$np" -le "$gpus" ] && [ "$np" -gt 1 ]; then
    run "replay suite vs the float64 reference, $np ranks (host path)" \
      ctest --test-dir "$build" -R "^replay_(make_cases|matches_reference)_np${np}\$" --output-on-failure
  fi
done
run "moe-bench, $gpus ranks (host path)" \
  mpirun -np "$gpus" -x OMP_NUM_THREADS=1 "$build/apps/moe-bench" --tokens 512 --iters 5 --warmup 1

if [ ${#failures[@]} -ne 0 ]; then
  verdict FAIL "failed: $(IFS=';'; echo "${failures[*]}")"
  exit 1
fi
verdict PASS "device kernels and NCCL on 1 and $gpus GPUs; replay suite and moe-bench ran the host path: the layer's device path is not wired yet"
