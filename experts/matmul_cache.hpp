// oneDNN matmul primitives for experts/gemm: created once per shape, kept in a bounded cache,
// executed with a caller-owned (per-thread) scratchpad. Internal to experts/.
//
// Rows change every call (tokens per expert), so how GEMMs are keyed on them decides both speed
// and allocation. Two row policies, chosen once per process by what oneDNN picks here:
//  - blocked: exact-shape primitives, the variable dimensions M and K split into a multiple of
//    kRowQuantum plus a tail below it (at most 2 x 2 pieces, each its own cached primitive), so
//    the number of distinct shapes stays bounded while every piece gets oneDNN's fixed-shape
//    kernels (brgemm on AVX-512: TOOLCHAIN.md measured them ~5% faster than sgemm, and
//    allocation-free with a user scratchpad; bf16 ~2x fp32). Memory objects live in the cache
//    entry: a call only sets data handles.
//  - sgemm: where oneDNN implements a fixed-shape matmul with its own sgemm ("gemm:jit", every
//    CPU without AVX-512), experts/gemm calls dnnl_sgemm directly, the epilogue in its own pass.
//    The primitive would run the same kernels and allocate the same packing buffers on every
//    call, and measured slower on small GEMMs (the router's: 2.5x single-threaded per call, and
//    test_execution_np4 went from 90-140 s to a 300 s timeout), because of its per-call overhead and the
//    parallel regions it opens for problems sgemm runs on one thread. A runtime-M primitive
//    (DNNL_RUNTIME_DIM_VAL) is also gemm:jit here: the same speed at the standard shape, the same
//    allocations, the same overhead.
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

enum class RowPolicy { blocked, sgemm };
constexpr std::int64_t kRowQuantum = 32;

// The policy in force: automatic on first use unless set (tests and benchmarks compare both).
RowPolicy row_policy();
void set_row_policy(RowPolicy policy);

// Whether oneDNN has bf16 matmul kernels on this CPU (AVX-512 and up); without them
// experts/gemm widens bf16 operands to fp32 first (same results, no speed-up).
bool native_bf16();

// The implementation oneDNN chose for a problem (e.g. "brg:avx512_core", "gemm:jit").
std::string implementation(const MatmulProblem& problem);

// Runs the problem on matmul primitives, blocked (m, n, k > 0; operands already checked).
// Thread-safe.
void run(const MatmulProblem& problem, const void* a, const void* b, float* c, const float* bias);

}  // namespace moe::experts::detail
