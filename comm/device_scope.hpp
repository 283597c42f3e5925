// Makes a communicator's CUDA device current for one call and restores the caller's afterwards:
// its memory and streams belong to that device, and the caller's choice must not change under it.
// CUDA builds only (MOE_HAS_CUDA).
#pragma once

#include <cuda_runtime_api.h>

#include "comm/nccl_check.hpp"

namespace moe::comm::detail {

class DeviceScope {
 public:
  explicit DeviceScope(int device) {
    MOE_CHECK_CUDA(cudaGetDevice(&previous_));
    if (previous_ != device) MOE_CHECK_CUDA(cudaSetDevice(device));
  }
  ~DeviceScope() { cudaSetDevice(previous_); }
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;

 private:
  int previous_ = 0;
};

}  // namespace moe::comm::detail
