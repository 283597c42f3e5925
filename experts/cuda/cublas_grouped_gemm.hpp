// The expert GEMMs of the device path (CUDA builds): one cublasGemmGroupedBatchedEx call for all
// local experts of a chunk, each its own (m, n, k), row-major fp32 like experts::gemm
// (experts/gemm.hpp), fp32 compute (CUBLAS_COMPUTE_32F: no TF32, so the fp32 tolerance of
// SPEC.md section 9 holds). The device pointer arrays cuBLAS reads are allocated once, by
// reserve(); a run() within the reserved group count allocates nothing.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <span>
#include <vector>

#include "experts/device/gemm_column_major.hpp"

namespace moe::experts {

class CublasGroupedGemm {
 public:
  // Creates the cuBLAS handle on the current device, bound to `stream` (every run is enqueued
  // there). Throws std::runtime_error naming the failed call.
  explicit CublasGroupedGemm(cudaStream_t stream);
  ~CublasGroupedGemm();
  CublasGroupedGemm(const CublasGroupedGemm&) = delete;
  CublasGroupedGemm& operator=(const CublasGroupedGemm&) = delete;

  // Room for up to `max_groups` products per run (device pointer arrays, pinned staging): the
  // only allocation, done when the layer's shape is set.
  void reserve(std::size_t max_groups);

  // Enqueues every group with the same op_a, op_b, alpha and beta (the expert FFN's products
  // share them). Empty groups (m, n or k = 0) are skipped. Throws std::invalid_argument beyond the
  // reserved count, std::runtime_error when cuBLAS or CUDA fails.
  void run(Op op_a, Op op_b, float alpha, float beta, std::span<const GemmGroup> groups);

 private:
  cublasHandle_t handle_ = nullptr;
  cudaStream_t stream_ = nullptr;
  std::size_t capacity_ = 0;
  // Per group: cuBLAS's column-major view of the row-major product (see run()).
  std::vector<cublasOperation_t> trans_a_, trans_b_;
  std::vector<int> m_, n_, k_, lda_, ldb_, ldc_, group_size_;
  std::vector<float> alpha_, beta_;
  // A, B and C pointers, staged in pinned memory and copied to the device arrays cuBLAS reads;
  // `staged_` says when the last copy has left the staging area (it is reused next run).
  const void** staging_ = nullptr;
  const void** device_pointers_ = nullptr;
  cudaEvent_t staged_ = nullptr;
};

}  // namespace moe::experts
