// The device path's expert GEMMs are row-major (like experts::gemm), cuBLAS is column-major. A
// row-major matrix read column-major is its transpose, so row-major C = op(A)·op(B) is, over the
// same memory, the column-major product Cᵀ = op(B)ᵀ·op(A)ᵀ: B first with op_b, then A with op_a,
// m and n swapped, leading dimensions unchanged. column_major_view does this translation for the
// cuBLAS grouped GEMM (experts/cuda/cublas_grouped_gemm.cpp); host code, tested against
// experts::gemm in the host suite with a column-major BLAS written out in the test.
#pragma once

#include <cstdint>

#include "experts/gemm.hpp"

namespace moe::experts {

// One product of a grouped call: C = alpha · op(A) · op(B) + beta · C, row-major, op(A) [m, k],
// op(B) [k, n], C [m, n], leading dimensions as stored. Pointers are device memory on the GPU.
struct GemmGroup {
  const float* a = nullptr;
  std::int64_t lda = 0;
  const float* b = nullptr;
  std::int64_t ldb = 0;
  float* c = nullptr;
  std::int64_t ldc = 0;
  std::int64_t m = 0, n = 0, k = 0;
};

// The same product as BLAS sees it: C (m × n, column-major, ldc) = op(A) (m × k) · op(B) (k × n).
struct ColumnMajorGemm {
  bool transpose_a = false, transpose_b = false;
  std::int64_t m = 0, n = 0, k = 0;
  const float* a = nullptr;
  std::int64_t lda = 0;
  const float* b = nullptr;
  std::int64_t ldb = 0;
  float* c = nullptr;
  std::int64_t ldc = 0;
};

inline ColumnMajorGemm column_major_view(Op op_a, Op op_b, const GemmGroup& g) {
  return {.transpose_a = op_b == Op::transpose,
          .transpose_b = op_a == Op::transpose,
          .m = g.n,
          .n = g.m,
          .k = g.k,
          .a = g.b,
          .lda = g.ldb,
          .b = g.a,
          .ldb = g.lda,
          .c = g.c,
          .ldc = g.ldc};
}

}  // namespace moe::experts
