#!/usr/bin/env bash
# The GPU checks of moe-ep, for a machine with CUDA GPUs (issue 15). Builds the CUDA build, then
# on the GPUs runs, each against its reference:
#   1. the data-path kernels (router, permute, activations) launched with CUDA against the same
#      bodies through the host launcher (test_device_kernels_gpu);
#   2. NcclCommunicator (grouped send/recv, reductions, its watchdog) on 1 GPU and on all GPUs
#      (test_nccl_comm, one rank per GPU);
#   3. the replay suite through the device layer (moe-replay --device cuda: CUDA kernels, cuBLAS,
#      NCCL; every standard case against the float64 reference) on 1 GPU, with a second run that
#      must give a bitwise identical result file, and on one rank per GPU with 3 overlap chunks,
#      with the padded exchange and check_finite, and with the bf16 wire (the bf16 cases, 1e-2);
#   4. moe-bench --device cuda on every GPU, with 2 chunks and with overlap_chunks auto.
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
echo "== building the CUDA build in $build ($gpus GPUs; only what the checks run)"
targets=(moe-replay moe-bench replay_tool test_device_kernels_gpu test_nccl_comm)
if ! cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMOE_WERROR=ON \
       -DMOE_ENABLE_CUDA=ON >> "$log" 2>&1; then
  verdict FAIL "configuring the CUDA build failed"
  exit 1
fi
if ! grep -q '^#define MOE_HAS_CUDA 1' "$build/generated/moe_config.hpp"; then
  verdict FAIL "the build did not enable CUDA (nvcc or NCCL not found by CMake)"
  exit 1
fi
if ! cmake --build "$build" --target "${targets[@]}" >> "$log" 2>&1; then
  verdict FAIL "the CUDA build failed"
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
# The replay suite through the device layer: cases made for the rank count, each run by
# moe-replay --device cuda and checked against the float64 reference (tests/apps/replay_suite.cmake;
# ONCE=ON: one run per case, a second run compared bitwise only where asked).
suite() {  # ranks, extra moe-replay arguments (a CMake list), ONCE, case regex ("": all), tag,
           # [case regex to leave out, bound, case directory prefix]
  suite_command=(cmake -DMPIRUN=mpirun -DNP="$1" "-DEXTRA=$2" -DONCE="$3" "-DCASES=$4" -DTAG="$5" \
    "-DEXCLUDE=${6:-}" -DBOUND="${7:-1e-5}" \
    -DREPLAY="$build/apps/moe-replay" -DTOOL="$build/tests/apps/replay_tool" \
    -DDIR="$build/${8:-gpu_cases}_np$1" -P "$root/tests/apps/replay_suite.cmake")
}
for np in 1 "$gpus"; do
  "$build/tests/apps/replay_tool" make-cases "$build/gpu_cases_np$np" "$np" >> "$log" 2>&1
done
"$build/tests/apps/replay_tool" make-bf16-cases "$build/gpu_bf16_cases_np$gpus" "$gpus" >> "$log" 2>&1
suite 1 "--device;cuda" ON "" _gpu
run "replay suite on the device layer vs the float64 reference, 1 GPU" "${suite_command[@]}"
suite 1 "--device;cuda" OFF "default|losses|score_policy|act_swiglu|deepseek_v3" _gpu_twice
run "replay on the device layer twice gives bitwise identical results, 1 GPU" "${suite_command[@]}"
if [ "$gpus" -gt 1 ]; then
  suite "$gpus" "--device;cuda;--overlap-chunks;3" ON "" _gpu
  run "replay suite on the device layer vs the float64 reference, $gpus GPUs, 3 chunks" "${suite_command[@]}"
fi
# The options the device layer runs beyond the default, on every GPU: the padded exchange with
# check_finite (cases with a capacity), the bf16 wire (the bf16 cases, SPEC.md section 9's 1e-2).
suite "$gpus" "--device;cuda;--exchange;padded;--check-finite;true" ON "" _gpu_padded dropless
run "replay suite on the device layer, padded exchange and check_finite, $gpus GPUs" "${suite_command[@]}"
suite "$gpus" "--device;cuda;--wire;bf16;--overlap-chunks;3" ON "" _gpu_wire_bf16 "" 1e-2 gpu_bf16_cases
run "replay suite on the device layer, bf16 wire, $gpus GPUs, 3 chunks" "${suite_command[@]}"
for chunks in 2 auto; do
  run "moe-bench --device cuda, $gpus GPUs, overlap_chunks $chunks" \
    mpirun -np "$gpus" "$build/apps/moe-bench" --device cuda --tokens 4096 --iters 10 --warmup 2 \
    --overlap-chunks "$chunks"
done

if [ ${#failures[@]} -ne 0 ]; then
  verdict FAIL "failed: $(IFS=';'; echo "${failures[*]}")"
  exit 1
fi
verdict PASS "device kernels and NCCL on 1 and $gpus GPUs; the replay suite through the device layer on 1 and $gpus GPUs matches the reference (padded, check_finite and the bf16 wire too); moe-bench ran on the device layer (2 chunks, auto)"
