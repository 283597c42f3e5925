// Device memory of the layer's workspace (CUDA builds): grown with cudaMalloc when a larger shape
// is first seen, then reused, so steady-state passes allocate nothing (ARCHITECTURE.md,
// "caller-owned tensors, layer-owned workspace"). Freed by the destructor.
#pragma once

#include <cstddef>

namespace moe::device {

class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& other) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  // At least `bytes` bytes on the current device; the contents are not kept when it grows.
  // Throws std::runtime_error (with the CUDA error text and the size) when cudaMalloc fails.
  void reserve(std::size_t bytes);

  template <class T>
  T* as() const noexcept {
    return static_cast<T*>(data_);
  }
  std::size_t capacity() const noexcept { return bytes_; }

 private:
  void* data_ = nullptr;
  std::size_t bytes_ = 0;
};

}  // namespace moe::device
