#include "experts/gemm.hpp"

#include <algorithm>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include <oneapi/dnnl/dnnl.h>

#include "experts/activation_kernels.hpp"
#include "experts/matmul_cache.hpp"

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

void check_epilogue(const Epilogue& e, std::int64_t n, std::int64_t k, float alpha) {
  if (!e.bias.empty() && static_cast<std::int64_t>(e.bias.size()) != n) {
    throw std::invalid_argument("gemm: bias has " + std::to_string(e.bias.size()) +
                                " elements, n=" + std::to_string(n) + " expected");
  }
  if (!e.bias.empty() && alpha != 1.0f) {
    // oneDNN scales the bias with the product; nothing here needs that, so it is not offered.
    throw std::invalid_argument("gemm: a bias needs alpha == 1");
  }
  if (e.activation && *e.activation == Activation::swiglu) {
    throw std::invalid_argument("gemm: swiglu is not an elementwise activation");
  }
  if (e.activation && k == 0) throw std::invalid_argument("gemm: an activation needs k > 0");
}

// Nothing to multiply: C = beta * C + bias, with beta == 0 overwriting (as BLAS does).
void scale_only(std::int64_t m, std::int64_t n, float beta, std::span<float> c, std::int64_t ldc,
                std::span<const float> bias) {
  for (std::int64_t i = 0; i < m; ++i) {
    float* row = c.data() + i * ldc;
    for (std::int64_t j = 0; j < n; ++j) {
      const float b = bias.empty() ? 0.0f : bias[static_cast<std::size_t>(j)];
      row[j] = (beta == 0.0f ? 0.0f : beta * row[j]) + b;
    }
  }
}

// A stored bf16 operand widened into this thread's fp32 buffer `slot` (dense: ld = cols).
std::span<const float> widened(std::span<const bf16> in, std::int64_t rows, std::int64_t cols,
                               std::int64_t ld, int slot) {
  thread_local std::vector<float> buffers[2];
  std::vector<float>& out = buffers[slot];
  const auto size = static_cast<std::size_t>(rows * cols);
  if (out.size() < size) out.resize(size);
  for (std::int64_t i = 0; i < rows; ++i) {
    const auto width = static_cast<std::size_t>(cols);
    convert(in.subspan(static_cast<std::size_t>(i * ld), width),
            std::span(out).subspan(static_cast<std::size_t>(i * cols), width));
  }
  return std::span<const float>(out).first(size);
}

// The sgemm row policy (experts/matmul_cache.hpp): oneDNN's sgemm, then the epilogue row by row.
void sgemm(const detail::MatmulProblem& p, const float* a, const float* b, float* c,
           const Epilogue& epilogue) {
  const dnnl_status_t status =
      dnnl_sgemm(p.trans_a ? 'T' : 'N', p.trans_b ? 'T' : 'N', p.m, p.n, p.k, p.alpha, a, p.lda,
                 b, p.ldb, p.beta, c, p.ldc);
  if (status != dnnl_success) {
    throw std::runtime_error("dnnl_sgemm(m=" + std::to_string(p.m) + ", n=" + std::to_string(p.n) +
                             ", k=" + std::to_string(p.k) + ") failed: status " +
                             std::to_string(static_cast<int>(status)));
  }
  if (epilogue.bias.empty() && !epilogue.activation) return;
  for (std::int64_t i = 0; i < p.m; ++i) {
    const std::span<float> row(c + i * p.ldc, static_cast<std::size_t>(p.n));
    if (epilogue.activation) {
      bias_activation_forward(*epilogue.activation, 1, p.n, epilogue.bias, row, row);
    } else {
      add_row_bias(1, p.n, epilogue.bias, row);
    }
  }
}

template <typename T>
void gemm_any(Op op_a, Op op_b, std::int64_t m, std::int64_t n, std::int64_t k, float alpha,
              std::span<const T> a, std::int64_t lda, std::span<const T> b, std::int64_t ldb,
              float beta, std::span<float> c, std::int64_t ldc, const Epilogue& epilogue) {
  if (m < 0 || n < 0 || k < 0) {
    throw std::invalid_argument("gemm: negative dimension (m=" + std::to_string(m) +
                                ", n=" + std::to_string(n) + ", k=" + std::to_string(k) + ")");
  }
  const bool ta = op_a == Op::transpose;
  const bool tb = op_b == Op::transpose;
  const std::int64_t a_rows = ta ? k : m, a_cols = ta ? m : k;
  const std::int64_t b_rows = tb ? n : k, b_cols = tb ? k : n;
  check_operand("A", a_rows, a_cols, lda, a.size());
  check_operand("B", b_rows, b_cols, ldb, b.size());
  check_operand("C", m, n, ldc, c.size());
  check_epilogue(epilogue, n, k, alpha);
  if (m == 0 || n == 0) return;
  if (k == 0) {
    scale_only(m, n, beta, c, ldc, epilogue.bias);
    return;
  }
  if constexpr (std::is_same_v<T, bf16>) {
    if (!detail::native_bf16() || detail::row_policy() == detail::RowPolicy::sgemm) {
      gemm_any<float>(op_a, op_b, m, n, k, alpha, widened(a, a_rows, a_cols, lda, 0), a_cols,
                      widened(b, b_rows, b_cols, ldb, 1), b_cols, beta, c, ldc, epilogue);
      return;
    }
  }
  detail::MatmulProblem p;
  p.m = m;
  p.n = n;
  p.k = k;
  p.trans_a = ta;
  p.trans_b = tb;
  p.lda = lda;
  p.ldb = ldb;
  p.ldc = ldc;
  p.type = std::is_same_v<T, bf16> ? detail::DataType::bf16 : detail::DataType::f32;
  p.alpha = alpha;
  p.beta = beta;
  p.bias = !epilogue.bias.empty();
  p.activation = epilogue.activation.has_value();
  if (epilogue.activation) p.activation_kind = *epilogue.activation;
  if constexpr (std::is_same_v<T, float>) {
    if (detail::row_policy() == detail::RowPolicy::sgemm) {
      sgemm(p, a.data(), b.data(), c.data(), epilogue);
      return;
    }
  }
  detail::run(p, a.data(), b.data(), c.data(), p.bias ? epilogue.bias.data() : nullptr);
}

}  // namespace

void gemm(Op op_a, Op op_b, std::int64_t m, std::int64_t n, std::int64_t k, float alpha,
          std::span<const float> a, std::int64_t lda, std::span<const float> b, std::int64_t ldb,
          float beta, std::span<float> c, std::int64_t ldc, const Epilogue& epilogue) {
  gemm_any(op_a, op_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, epilogue);
}

void gemm(Op op_a, Op op_b, std::int64_t m, std::int64_t n, std::int64_t k, float alpha,
          std::span<const bf16> a, std::int64_t lda, std::span<const bf16> b, std::int64_t ldb,
          float beta, std::span<float> c, std::int64_t ldc, const Epilogue& epilogue) {
  gemm_any(op_a, op_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, epilogue);
}

bool bf16_is_native() { return detail::native_bf16(); }

bool gemm_allocation_free(bool bf16_operands) {
  if (detail::row_policy() == detail::RowPolicy::sgemm) return false;
  // Every operand layout the expert GEMMs use (forward A·Bᵀ, backward A·B and Aᵀ·B accumulating):
  // oneDNN may pick its sgemm for one of them only.
  for (const auto& [trans_a, trans_b, beta] : {std::tuple{false, true, 0.0f},
                                              std::tuple{false, false, 0.0f},
                                              std::tuple{true, false, 1.0f}}) {
    detail::MatmulProblem probe;
    probe.m = probe.n = probe.k = probe.lda = probe.ldb = probe.ldc = 256;
    probe.trans_a = trans_a;
    probe.trans_b = trans_b;
    probe.beta = beta;
    if (bf16_operands && detail::native_bf16()) probe.type = detail::DataType::bf16;
    if (detail::implementation(probe).rfind("gemm", 0) == 0) return false;
  }
  return true;
}

}  // namespace moe::experts
