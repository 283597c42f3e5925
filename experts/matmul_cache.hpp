// oneDNN matmul primitives for experts/gemm: created once per problem kind, kept in a bounded
// cache, executed with a caller-owned (per-thread) scratchpad. Internal to experts/.
//
// Rows change every call (tokens per expert), so how a primitive is keyed on them decides both
// speed and allocation. Two row policies, chosen once per process by what oneDNN picks here:
//  - blocked: exact-shape primitives, the variable dimensions M and K split into a multiple of
//    kRowQuantum plus a tail below it (at most 2 x 2 pieces, each its own cached primitive), so
//    the number of distinct shapes stays bounded while every piece gets oneDNN's fixed-shape
//    kernels (brgemm on AVX-512: ~5% faster than sgemm, and allocation-free with a user
//    scratchpad). Memory objects live in the cache entry: a call only sets data handles.
//  - runtime: one primitive per kind with M, K and the leading dimensions as
//    DNNL_RUNTIME_DIM_VAL. Chosen when oneDNN implements the fixed-shape problem with its sgemm
//    ("gemm:jit", every CPU without AVX-512): that code packs into buffers it allocates on every
//    call whatever the shape, runtime-M runs at the same speed (measured), and one primitive per
//    kind costs no creation when rows change.
// oneDNN 2.6 itself allocates a few small blocks inside every primitive execution (its argument
// map; measured: 4 per call, also for an eltwise primitive): those are not avoidable from outside.
#pragma once

#include <cstdint>
#include <string>

#include "experts/activation.hpp"

namespace moe::experts::detail {

enum class DataType : std::uint8_t { f32, bf16 };

// C[m, n] = act(alpha * op(A) op(B) + beta * C + bias), row-major, A and B of `type`, C fp32.
struct MatmulProblem {
  std::int64_t m = 0, n = 0, k = 0;
  bool trans_a = false, trans_b = false;
  std::int64_t lda = 0, ldb = 0, ldc = 0;
  DataType type = DataType::f32;
  float alpha = 1.0f, beta = 0.0f;
  bool bias = false;
  bool activation = false;
  Activation activation_kind = Activation::relu;  // when `activation`; never swiglu
};

enum class RowPolicy { blocked, runtime };
constexpr std::int64_t kRowQuantum = 32;

// The policy in force: automatic on first use unless set (tests and benchmarks compare both).
RowPolicy row_policy();
void set_row_policy(RowPolicy policy);

// Whether oneDNN has bf16 matmul kernels on this CPU (AVX-512 and up); without them
// experts/gemm widens bf16 operands to fp32 first (same results, no speed-up).
bool native_bf16();

// The implementation oneDNN chose for a problem (e.g. "brg:avx512_core", "gemm:jit").
std::string implementation(const MatmulProblem& problem);

// Runs the problem on oneDNN (m, n, k > 0; operands already checked). Thread-safe.
void run(const MatmulProblem& problem, const void* a, const void* b, float* c, const float* bias);

}  // namespace moe::experts::detail
