#include "experts/gemm.hpp"

#include <oneapi/dnnl/dnnl.h>
#include <oneapi/dnnl/dnnl_debug.h>

#include <algorithm>
#include <stdexcept>
#include <string>

namespace moe::experts {
namespace {

// Elements a row-major operand spans: the last stored row starts at (rows - 1) * ld.
std::int64_t extent(std::int64_t rows, std::int64_t cols, std::int64_t ld) {
  return rows == 0 || cols == 0 ? 0 : (rows - 1) * ld + cols;
}

void check_operand(const char* name, std::int64_t stored_rows, std::int64_t stored_cols,
                   std::int64_t ld, std::size_t size) {
  if (ld < std::max<std::int64_t>(stored_cols, 1)) {
    throw std::invalid_argument("gemm: leading dimension of " + std::string(name) + " (" +
                                std::to_string(ld) + ") is smaller than its row length (" +
                                std::to_string(stored_cols) + ")");
  }
  const std::int64_t needed = extent(stored_rows, stored_cols, ld);
  if (static_cast<std::int64_t>(size) < needed) {
    throw std::invalid_argument("gemm: " + std::string(name) + " holds " +
                                std::to_string(size) + " elements, " + std::to_string(needed) +
                                " needed");
  }
}

}  // namespace

void gemm(Op op_a, Op op_b, std::int64_t m, std::int64_t n, std::int64_t k, float alpha,
          std::span<const float> a, std::int64_t lda, std::span<const float> b, std::int64_t ldb,
          float beta, std::span<float> c, std::int64_t ldc) {
  if (m < 0 || n < 0 || k < 0) {
    throw std::invalid_argument("gemm: negative dimension (m=" + std::to_string(m) +
                                ", n=" + std::to_string(n) + ", k=" + std::to_string(k) + ")");
  }
  const bool ta = op_a == Op::transpose;
  const bool tb = op_b == Op::transpose;
  check_operand("A", ta ? k : m, ta ? m : k, lda, a.size());
  check_operand("B", tb ? n : k, tb ? k : n, ldb, b.size());
  check_operand("C", m, n, ldc, c.size());
  if (m == 0 || n == 0) return;
  if (k == 0) {
    // Nothing to multiply: C = beta * C, with beta == 0 overwriting (as BLAS does).
    for (std::int64_t i = 0; i < m; ++i) {
      float* row = c.data() + i * ldc;
      for (std::int64_t j = 0; j < n; ++j) row[j] = beta == 0.0f ? 0.0f : beta * row[j];
    }
    return;
  }
  const dnnl_status_t status =
      dnnl_sgemm(ta ? 'T' : 'N', tb ? 'T' : 'N', m, n, k, alpha, a.data(), lda, b.data(), ldb,
                 beta, c.data(), ldc);
  if (status != dnnl_success) {
    throw std::runtime_error("dnnl_sgemm(" + std::string(ta ? "T" : "N") + (tb ? "T" : "N") +
                             ", m=" + std::to_string(m) + ", n=" + std::to_string(n) +
                             ", k=" + std::to_string(k) + ") failed: " +
                             dnnl_status2str(status));
  }
}

}  // namespace moe::experts
