// The CUDA launcher of a data-path op (CUDA builds): op(i) for every i of [0, n) as a kernel on
// `stream`, the same index space the host launcher (experts/device/launch_host.hpp) loops over.
// Callable from host C++: it is defined in launch_device.cuh and explicitly instantiated, for
// every op there is, in the .cu file beside the ops (experts/cuda/device_kernels.cu for the
// activation ops, runtime/device/device_kernels.cu for router and permute); an op missing from
// those lists fails to link. Returns the launch's error (cudaGetLastError).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "experts/device/launch_host.hpp"

namespace moe::device {

template <IndexOp Op>
cudaError_t launch_device(std::int64_t n, const Op& op, cudaStream_t stream);

}  // namespace moe::device
