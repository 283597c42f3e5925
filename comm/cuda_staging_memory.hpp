// StagingMemory (comm/staged_communicator.hpp) on a CUDA device, for a StagedCommunicator over an
// NcclCommunicator (CUDA builds only, MOE_HAS_CUDA).
//
// Ordering against NCCL: NcclCommunicator runs its operations on its own non-blocking stream,
// which does not wait for the legacy default stream, and a plain cudaMemcpy from pageable host
// memory may return before the data has reached the device. So each copy here is enqueued on
// this object's stream and waited for before it returns: the staged input is on the device
// before the NCCL operation is enqueued, and since NcclCommunicator returns only once its stream
// has finished, the copy back reads the complete result. The control path moves a few hundred
// bytes per operation, so the two waits cost microseconds, not bandwidth.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <memory>

#include "comm/staged_communicator.hpp"

namespace moe::comm {

class CudaStagingMemory final : public StagingMemory {
 public:
  // Staging on CUDA device `device` (the NCCL communicator's: NcclCommunicator::device()), with
  // its own stream for the copies. Throws CommError when CUDA fails.
  explicit CudaStagingMemory(int device);
  ~CudaStagingMemory() override;
  CudaStagingMemory(const CudaStagingMemory&) = delete;
  CudaStagingMemory& operator=(const CudaStagingMemory&) = delete;

  // cudaMalloc when `bytes` exceeds the current size (cudaMalloc aligns to at least 256 bytes).
  std::byte* grow(std::size_t bytes) override;
  void to_device(std::byte* device, const std::byte* host, std::size_t bytes) override;
  void to_host(std::byte* host, const std::byte* device, std::size_t bytes) override;
  std::unique_ptr<StagingMemory> make_another() const override;

 private:
  // Enqueues the copy on stream_ and waits for it.
  void copy(void* to, const void* from, std::size_t bytes, cudaMemcpyKind kind);

  int device_ = 0;
  cudaStream_t stream_ = nullptr;
  std::byte* data_ = nullptr;
  std::size_t bytes_ = 0;
};

}  // namespace moe::comm
