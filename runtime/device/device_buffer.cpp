#include "runtime/device/device_buffer.hpp"

#include <cuda_runtime_api.h>

#include <stdexcept>
#include <string>
#include <utility>

namespace moe::device {

DeviceBuffer::~DeviceBuffer() { cudaFree(data_); }

DeviceBuffer::DeviceBuffer(DeviceBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
  if (this != &other) {
    cudaFree(data_);
    data_ = std::exchange(other.data_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

void DeviceBuffer::reserve(std::size_t bytes) {
  if (bytes <= bytes_) return;
  // Free first: the old contents are not needed, and two copies might not fit.
  cudaFree(std::exchange(data_, nullptr));
  bytes_ = 0;
  const cudaError_t code = cudaMalloc(&data_, bytes);
  if (code != cudaSuccess) {
    data_ = nullptr;
    throw std::runtime_error("moe-ep: cudaMalloc of " + std::to_string(bytes) +
                             " bytes for the layer's device workspace failed: " +
                             cudaGetErrorString(code));
  }
  bytes_ = bytes;
}

}  // namespace moe::device
