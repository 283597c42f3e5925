#include "runtime/device/cuda_backend.hpp"

#include <stdexcept>
#include <string>

#include "comm/cuda_staging_memory.hpp"

namespace moe::device {

CudaBackend::CudaBackend(comm::MpiCommunicator& mpi)
    : nccl_(std::make_unique<comm::NcclCommunicator>(mpi)),
      control_(*nccl_, std::make_unique<comm::CudaStagingMemory>(nccl_->device())),
      streams_(nccl_->stream()),
      exchange_(*nccl_, streams_),
      gemm_(streams_.compute()) {}

// Work still queued may use the buffers the layer frees after this: drain the streams first.
CudaBackend::~CudaBackend() {
  cudaStreamSynchronize(streams_.compute());
  cudaStreamSynchronize(streams_.comm());
}

void CudaBackend::check(cudaError_t code, const char* what) {
  if (code != cudaSuccess) {
    throw std::runtime_error(std::string("moe-ep: device layer: ") + what + " failed: " + cudaGetErrorString(code));
  }
}

void CudaBackend::gemm(experts::Op op_a, experts::Op op_b, float alpha, float beta,
                       std::span<const experts::GemmGroup> groups) {
  gemm_.reserve(groups.size());  // grows only: the first calls of a shape allocate, later ones not
  gemm_.run(op_a, op_b, alpha, beta, groups);
}

void CudaBackend::copy(void* to, const void* from, std::size_t bytes, cudaMemcpyKind kind) {
  if (bytes == 0) return;
  check(cudaMemcpyAsync(to, from, bytes, kind, streams_.compute()), "cudaMemcpyAsync");
}

void CudaBackend::fill_zero(void* to, std::size_t bytes) {
  if (bytes == 0) return;
  check(cudaMemsetAsync(to, 0, bytes, streams_.compute()), "cudaMemsetAsync");
}

void CudaBackend::synchronize() { check(cudaStreamSynchronize(streams_.compute()), "cudaStreamSynchronize"); }

}  // namespace moe::device
