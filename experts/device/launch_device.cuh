// The CUDA launcher's definition: op(i) for every i of [0, n), one index per thread (a
// grid-stride loop, so any n fits one launch), enqueued on `stream`. Only the .cu files that
// list the ops include this (experts/cuda/device_kernels.cu, runtime/device/device_kernels.cu);
// everyone else calls launch_device through experts/device/launch_device.hpp.
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>

#include "experts/device/launch_device.hpp"

namespace moe::device {

template <class Op>
__global__ void index_kernel(std::int64_t n, Op op) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    op(i);
  }
}

// 256 threads per block; at most 65535 blocks (the grid-stride loop covers the rest), which keeps
// every SM of an sm_80/sm_90 part busy without a device query on the hot path.
template <IndexOp Op>
cudaError_t launch_device(std::int64_t n, const Op& op, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  constexpr std::int64_t kThreads = 256;
  const auto blocks = static_cast<unsigned>(std::min<std::int64_t>((n + kThreads - 1) / kThreads, 65535));
  index_kernel<<<blocks, static_cast<unsigned>(kThreads), 0, stream>>>(n, op);
  return cudaGetLastError();
}

}  // namespace moe::device
