// The oneDNN GEMM wrapper against a float64 triple loop, for every transpose combination, both
// row policies (sizes that cross the row quantum, so both the bulk and the tail pieces run), bf16
// operands and the fused epilogue.
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "experts/gemm.hpp"
#include "tests/experts/ffn_reference.hpp"
#include "tests/experts/row_policy_scope.hpp"

namespace {

using moe::experts::Activation;
using moe::experts::bf16;
using moe::experts::Epilogue;
using moe::experts::gemm;
using moe::experts::Op;
using moe::experts::detail::RowPolicy;
using moe::experts::test::RowPolicyScope;

std::vector<float> random_vector(std::size_t n, std::mt19937& rng) {
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (float& f : v) f = dist(rng);
  return v;
}

// Element (i, j) of op(M) for a row-major M with leading dimension ld.
double op_at(const std::vector<float>& m, Op op, std::int64_t ld, std::int64_t i, std::int64_t j) {
  const std::int64_t idx = op == Op::none ? i * ld + j : j * ld + i;
  return static_cast<double>(m[static_cast<std::size_t>(idx)]);
}

}  // namespace

TEST_CASE("experts/gemm matches float64 for every transpose and padded strides",
          "[experts][gemm]") {
  const Op op_a = GENERATE(Op::none, Op::transpose);
  const Op op_b = GENERATE(Op::none, Op::transpose);
  const RowPolicy policy = GENERATE(RowPolicy::sgemm, RowPolicy::blocked);
  const std::int64_t m = GENERATE(13, 45), n = 9, k = GENERATE(21, 70), pad = 3;
  CAPTURE(op_a == Op::transpose, op_b == Op::transpose, policy == RowPolicy::blocked, m, k);
  RowPolicyScope scope(policy);
  std::mt19937 rng(17);
  // Stored shapes: A is [m, k] or [k, m], B is [k, n] or [n, k]; each row padded by `pad`.
  const std::int64_t a_rows = op_a == Op::none ? m : k, a_cols = op_a == Op::none ? k : m;
  const std::int64_t b_rows = op_b == Op::none ? k : n, b_cols = op_b == Op::none ? n : k;
  const std::int64_t lda = a_cols + pad, ldb = b_cols + pad, ldc = n + pad;
  const auto a = random_vector(static_cast<std::size_t>(a_rows * lda), rng);
  const auto b = random_vector(static_cast<std::size_t>(b_rows * ldb), rng);
  auto c = random_vector(static_cast<std::size_t>(m * ldc), rng);
  const auto c0 = c;
  const float alpha = 0.75f, beta = -1.25f;
  gemm(op_a, op_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  for (std::int64_t i = 0; i < m; ++i) {
    for (std::int64_t j = 0; j < n; ++j) {
      double want = static_cast<double>(beta) * static_cast<double>(c0[i * ldc + j]);
      double dot = 0.0;
      for (std::int64_t p = 0; p < k; ++p) dot += op_at(a, op_a, lda, i, p) * op_at(b, op_b, ldb, p, j);
      want += static_cast<double>(alpha) * dot;
      CHECK(static_cast<double>(c[i * ldc + j]) == Approx(want).margin(1e-5));
    }
    for (std::int64_t j = n; j < ldc; ++j) CHECK(c[i * ldc + j] == c0[i * ldc + j]);  // padding
  }
}

TEST_CASE("experts/gemm with beta 0 overwrites C, even NaN", "[experts][gemm]") {
  const std::vector<float> a{1, 2, 3, 4, 5, 6};  // [2, 3]
  const std::vector<float> b{1, 0, 0, 1, 1, 1};  // [3, 2]
  std::vector<float> c(4, std::numeric_limits<float>::quiet_NaN());
  gemm(Op::none, Op::none, 2, 2, 3, 1.0f, a, 3, b, 2, 0.0f, c, 2);
  CHECK(c == std::vector<float>{4, 5, 10, 11});
}

TEST_CASE("experts/gemm degenerate sizes", "[experts][gemm]") {
  std::vector<float> c{1, 2, 3, 4};
  const std::vector<float> none;
  // k == 0: C = beta * C; beta == 0 clears it.
  gemm(Op::none, Op::none, 2, 2, 0, 1.0f, none, 1, none, 2, 2.0f, c, 2);
  CHECK(c == std::vector<float>{2, 4, 6, 8});
  gemm(Op::none, Op::transpose, 2, 2, 0, 1.0f, none, 1, none, 1, 0.0f, c, 2);
  CHECK(c == std::vector<float>{0, 0, 0, 0});
  // m == 0 or n == 0: nothing to write, C untouched.
  std::vector<float> untouched{7};
  gemm(Op::none, Op::none, 0, 1, 3, 1.0f, none, 3, std::vector<float>{1, 2, 3}, 1, 0.0f,
       untouched, 1);
  CHECK(untouched[0] == 7.0f);
  std::vector<float> empty_c;
  gemm(Op::none, Op::none, 1, 0, 3, 1.0f, std::vector<float>{1, 2, 3}, 3, none, 1, 0.0f, empty_c,
       1);
}

TEST_CASE("experts/gemm rejects operands too small for their shape", "[experts][gemm]") {
  const std::vector<float> a(6), b(6);
  std::vector<float> c(4);
  CHECK_NOTHROW(gemm(Op::none, Op::none, 2, 2, 3, 1.0f, a, 3, b, 2, 0.0f, c, 2));
  const std::vector<float> short_a(5);
  CHECK_THROWS_AS(gemm(Op::none, Op::none, 2, 2, 3, 1.0f, short_a, 3, b, 2, 0.0f, c, 2),
                  std::invalid_argument);
  // lda below the stored row length.
  CHECK_THROWS_AS(gemm(Op::none, Op::none, 2, 2, 3, 1.0f, a, 2, b, 2, 0.0f, c, 2),
                  std::invalid_argument);
  // Transposed A is stored [k, m] = [3, 2]: lda 2 is right, 3 needs more elements.
  CHECK_NOTHROW(gemm(Op::transpose, Op::none, 2, 2, 3, 1.0f, a, 2, b, 2, 0.0f, c, 2));
  CHECK_THROWS_AS(gemm(Op::transpose, Op::none, 2, 2, 3, 1.0f, a, 3, b, 2, 0.0f, c, 2),
                  std::invalid_argument);
  std::vector<float> short_c(3);
  CHECK_THROWS_AS(gemm(Op::none, Op::none, 2, 2, 3, 1.0f, a, 3, b, 2, 0.0f, short_c, 2),
                  std::invalid_argument);
  CHECK_THROWS_AS(gemm(Op::none, Op::none, -1, 2, 3, 1.0f, a, 3, b, 2, 0.0f, c, 2),
                  std::invalid_argument);
  try {
    gemm(Op::none, Op::none, 2, 2, 3, 1.0f, short_a, 3, b, 2, 0.0f, c, 2);
  } catch (const std::invalid_argument& e) {
    CHECK(std::string(e.what()).find("gemm") != std::string::npos);
  }
}

namespace {

std::vector<bf16> to_bf16(const std::vector<float>& v) {
  std::vector<bf16> out(v.size());
  moe::experts::convert(v, out);
  return out;
}

std::vector<float> widen(const std::vector<bf16>& v) {
  std::vector<float> out(v.size());
  moe::experts::convert(v, out);
  return out;
}

}  // namespace

TEST_CASE("experts/gemm with bf16 operands accumulates their exact products in fp32",
          "[experts][gemm][bf16]") {
  const Op op_a = GENERATE(Op::none, Op::transpose);
  const Op op_b = GENERATE(Op::none, Op::transpose);
  const RowPolicy policy = GENERATE(RowPolicy::sgemm, RowPolicy::blocked);
  CAPTURE(op_a == Op::transpose, op_b == Op::transpose, policy == RowPolicy::blocked);
  RowPolicyScope scope(policy);
  const std::int64_t m = 37, n = 11, k = 66;
  std::mt19937 rng(5);
  const std::int64_t lda = op_a == Op::none ? k : m, ldb = op_b == Op::none ? n : k;
  const auto a = to_bf16(random_vector(static_cast<std::size_t>(m * k), rng));
  const auto b = to_bf16(random_vector(static_cast<std::size_t>(k * n), rng));
  std::vector<float> c(static_cast<std::size_t>(m * n), 1.0f);
  gemm(op_a, op_b, m, n, k, 1.0f, a, lda, b, ldb, 0.5f, c, n);
  // The bf16 values are exact in fp32 and float64: only the fp32 accumulation rounds.
  const auto wa = widen(a), wb = widen(b);
  for (std::int64_t i = 0; i < m; ++i) {
    for (std::int64_t j = 0; j < n; ++j) {
      double want = 0.5;
      for (std::int64_t p = 0; p < k; ++p) {
        want += op_at(wa, op_a, lda, i, p) * op_at(wb, op_b, ldb, p, j);
      }
      const double got = c[static_cast<std::size_t>(i * n + j)];
      CHECK(got == Approx(want).margin(1e-4));
    }
  }
}

TEST_CASE("experts/gemm fuses a bias and an activation", "[experts][gemm]") {
  const Activation act = GENERATE(Activation::gelu, Activation::gelu_tanh, Activation::relu,
                                  Activation::silu);
  const RowPolicy policy = GENERATE(RowPolicy::sgemm, RowPolicy::blocked);
  CAPTURE(moe::experts::to_string(act), policy == RowPolicy::blocked);
  RowPolicyScope scope(policy);
  const std::int64_t m = 40, n = 12, k = 35;
  std::mt19937 rng(8);
  const auto a = random_vector(static_cast<std::size_t>(m * k), rng);
  const auto b = random_vector(static_cast<std::size_t>(n * k), rng);  // [n, k], used transposed
  const auto bias = random_vector(static_cast<std::size_t>(n), rng);
  std::vector<float> c(static_cast<std::size_t>(m * n), std::numeric_limits<float>::quiet_NaN());
  gemm(Op::none, Op::transpose, m, n, k, 1.0f, a, k, b, k, 0.0f, c, n,
       Epilogue{.bias = bias, .activation = act});
  for (std::int64_t i = 0; i < m; ++i) {
    for (std::int64_t j = 0; j < n; ++j) {
      double pre = bias[static_cast<std::size_t>(j)];
      for (std::int64_t p = 0; p < k; ++p) {
        pre += op_at(a, Op::none, k, i, p) * op_at(b, Op::transpose, k, p, j);
      }
      const double want = moe::experts::test::ref_activate(act, pre);
      const double got = c[static_cast<std::size_t>(i * n + j)];
      CHECK(got == Approx(want).margin(1e-5));
    }
  }
}

TEST_CASE("experts/gemm rejects an epilogue that does not fit", "[experts][gemm]") {
  const std::vector<float> a(6), b(6), bias(3);
  std::vector<float> c(4);
  CHECK_THROWS_AS(gemm(Op::none, Op::none, 2, 2, 3, 1.0f, a, 3, b, 2, 0.0f, c, 2,
                       Epilogue{.bias = bias, .activation = {}}),
                  std::invalid_argument);
  CHECK_THROWS_AS(gemm(Op::none, Op::none, 2, 2, 3, 1.0f, a, 3, b, 2, 0.0f, c, 2,
                       Epilogue{.bias = {}, .activation = Activation::swiglu}),
                  std::invalid_argument);
  CHECK_THROWS_AS(gemm(Op::none, Op::none, 2, 2, 3, 2.0f, a, 3, b, 2, 0.0f, c, 2,
                       Epilogue{.bias = std::span(bias).first(2), .activation = {}}),
                  std::invalid_argument);
}
