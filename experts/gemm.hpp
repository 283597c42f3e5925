// Row-major single-precision GEMM on oneDNN, the one matrix product the host build uses (expert
// FFNs, the router's logits). dnnl_sgemm was measured faster than the matmul primitive with
// strides on every expert shape here (forward and the transposed products of backward), and it
// needs no primitive per shape, which matters because rows per expert change every batch.
#pragma once

#include <cstdint>
#include <span>

namespace moe::experts {

// Whether an operand is used as stored or transposed.
enum class Op { none, transpose };

// C = alpha * op(A) * op(B) + beta * C, all row-major, with op(A) [m, k], op(B) [k, n], C [m, n]
// and leading dimensions lda/ldb/ldc (elements between consecutive rows as stored). beta == 0
// overwrites C (its old contents, even NaN, are ignored). m, n or k may be 0. Throws
// std::invalid_argument when a span is too short for its shape and leading dimension, and
// std::runtime_error naming dnnl_sgemm and its status when oneDNN fails. Threads: oneDNN's
// OpenMP runtime (OMP_NUM_THREADS).
void gemm(Op op_a, Op op_b, std::int64_t m, std::int64_t n, std::int64_t k, float alpha,
          std::span<const float> a, std::int64_t lda, std::span<const float> b, std::int64_t ldb,
          float beta, std::span<float> c, std::int64_t ldc);

}  // namespace moe::experts
