// Row-major GEMM on oneDNN: the one matrix product the host build uses (expert FFNs, the
// router's logits), in fp32 or with bf16 operands, optionally with a fused bias and activation.
// On CPUs with oneDNN's brgemm kernels (AVX-512) it runs cached matmul primitives whose scratchpad
// the calling thread owns, so steady-state calls allocate no buffers; elsewhere it runs
// dnnl_sgemm, which packs into buffers it allocates itself (experts/matmul_cache.hpp says why,
// and how rows that change every call are handled).
#pragma once

#include <cstdint>
#include <optional>
#include <span>

#include "experts/activation.hpp"
#include "experts/bf16.hpp"

namespace moe::experts {

// Whether an operand is used as stored or transposed.
enum class Op { none, transpose };

// Work fused into the product, applied to alpha * op(A) op(B) + beta * C in this order.
struct Epilogue {
  std::span<const float> bias;            // [n], added to every row; empty: none
  std::optional<Activation> activation;   // last; gelu, gelu_tanh, relu or silu (not swiglu)
};

// C = act(alpha * op(A) * op(B) + beta * C + bias), all row-major, with op(A) [m, k], op(B)
// [k, n], C [m, n] and leading dimensions lda/ldb/ldc (elements between consecutive rows as
// stored). beta == 0 overwrites C (its old contents, even NaN, are ignored). m, n or k may be 0
// (k == 0 with an activation is rejected). Throws std::invalid_argument when a span is too short
// for its shape and leading dimension, or the epilogue does not fit, and std::runtime_error
// naming the oneDNN call and its status when oneDNN fails. Thread-safe. Threads: oneDNN's OpenMP
// runtime (OMP_NUM_THREADS).
void gemm(Op op_a, Op op_b, std::int64_t m, std::int64_t n, std::int64_t k, float alpha,
          std::span<const float> a, std::int64_t lda, std::span<const float> b, std::int64_t ldb,
          float beta, std::span<float> c, std::int64_t ldc, const Epilogue& epilogue = {});

// The same with bf16 operands, fp32 accumulation and fp32 C. On a CPU without oneDNN bf16
// kernels (no AVX-512) the operands are widened to fp32 first: same results, no speed-up.
void gemm(Op op_a, Op op_b, std::int64_t m, std::int64_t n, std::int64_t k, float alpha,
          std::span<const bf16> a, std::int64_t lda, std::span<const bf16> b, std::int64_t ldb,
          float beta, std::span<float> c, std::int64_t ldc, const Epilogue& epilogue = {});

// True when bf16 GEMMs run on native oneDNN bf16 kernels here (see above).
bool bf16_is_native();

// True when oneDNN runs these GEMMs without allocating buffers of its own: its fixed-shape
// kernels (brgemm, AVX-512) with the scratchpad this code owns. False where its matmul falls back
// to its sgemm ("gemm:jit", CPUs without AVX-512), which allocates packing buffers on every call.
// Either way oneDNN 2.6 allocates a few small blocks inside every primitive execution.
bool gemm_allocation_free(bool bf16_operands);

}  // namespace moe::experts
