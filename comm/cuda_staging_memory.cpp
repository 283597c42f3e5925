#include "comm/cuda_staging_memory.hpp"

#include <utility>

#include "comm/device_scope.hpp"
#include "comm/nccl_check.hpp"

namespace moe::comm {

CudaStagingMemory::CudaStagingMemory(int device) : device_(device) {
  detail::DeviceScope scope(device_);
  MOE_CHECK_CUDA(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
}

CudaStagingMemory::~CudaStagingMemory() {
  int previous = device_;
  cudaGetDevice(&previous);
  cudaSetDevice(device_);
  cudaFree(data_);
  cudaStreamDestroy(stream_);
  cudaSetDevice(previous);
}

std::byte* CudaStagingMemory::grow(std::size_t bytes) {
  if (bytes <= bytes_) return data_;
  detail::DeviceScope scope(device_);
  // Free first: the old contents are not needed, and two copies might not fit.
  MOE_CHECK_CUDA(cudaFree(std::exchange(data_, nullptr)));
  bytes_ = 0;
  void* data = nullptr;
  MOE_CHECK_CUDA(cudaMalloc(&data, bytes));
  data_ = static_cast<std::byte*>(data);
  bytes_ = bytes;
  return data_;
}

void CudaStagingMemory::to_device(std::byte* device, const std::byte* host, std::size_t bytes) {
  copy(device, host, bytes, cudaMemcpyHostToDevice);
}

void CudaStagingMemory::to_host(std::byte* host, const std::byte* device, std::size_t bytes) {
  copy(host, device, bytes, cudaMemcpyDeviceToHost);
}

std::unique_ptr<StagingMemory> CudaStagingMemory::make_another() const {
  return std::make_unique<CudaStagingMemory>(device_);
}

void CudaStagingMemory::copy(void* to, const void* from, std::size_t bytes, cudaMemcpyKind kind) {
  if (bytes == 0) return;
  detail::DeviceScope scope(device_);
  MOE_CHECK_CUDA(cudaMemcpyAsync(to, from, bytes, kind, stream_));
  MOE_CHECK_CUDA(cudaStreamSynchronize(stream_));
}

}  // namespace moe::comm
