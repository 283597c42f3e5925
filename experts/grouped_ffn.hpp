// Forward and backward of a shard's experts on rows already grouped by local expert: rows
// [offsets[e], offsets[e+1]) of the batch belong to local expert e. Matrix products are oneDNN
// GEMMs (experts/gemm.hpp), one per expert and weight matrix, with the biases fused into them;
// nothing loops over tokens for a matrix product.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "experts/bf16.hpp"
#include "experts/compute.hpp"
#include "experts/expert_shard.hpp"

namespace moe::experts {

// What backward needs from forward, owned by the caller (one per micro-batch in flight).
// Vectors grow to the largest batch seen and are then reused: no allocation in steady state.
struct FfnActivations {
  std::vector<float> hidden_pre;   // [N, h]  x·w1ᵀ + b1
  std::vector<float> hidden_gate;  // [N, h]  x·w3ᵀ (swiglu only)
  std::vector<float> hidden_act;   // [N, h]  activated hidden, the input of w2
  // Compute::bf16 only: the GEMM operands x and hidden_act rounded to bf16, kept for backward.
  std::vector<bf16> input_bf16;    // [N, d]
  std::vector<bf16> act_bf16;      // [N, h]
  Compute compute = Compute::fp32;  // what forward ran with; backward follows it
};

// Grows `saved` to what ffn_forward needs for `rows` rows, so a caller can allocate ahead (a
// pipelined layer does, before any chunk computes).
void reserve(FfnActivations& saved, std::int64_t rows, const ExpertShape& shape, Compute compute);

// offsets has num_experts()+1 entries, offsets[0] == 0, non-decreasing; x and y are [N, d] with
// N == offsets.back(). With Compute::bf16 the GEMMs read x, the hidden activations and the
// shard's bf16 weights (refreshed here when the shard changed, see ExpertShard::refresh_bf16);
// everything else (biases, activation, outputs) stays fp32.
void ffn_forward(const ExpertShard& shard, std::span<const float> x,
                 std::span<const std::int64_t> offsets, std::span<float> y,
                 FfnActivations& saved, Compute compute = Compute::fp32);

// Given dy [N, d], writes dx [N, d] and ADDS every parameter gradient into grads (same shape as
// shard), so chunks of one batch accumulate. `saved` is what ffn_forward filled for these rows,
// and its precision is the one backward uses (gradients are fp32 either way).
// Its scratch ([largest expert's rows, h], twice for swiglu) is per thread and only grows, so
// concurrent calls from different threads are safe as long as their grads differ.
void ffn_backward(const ExpertShard& shard, std::span<const float> x,
                  std::span<const std::int64_t> offsets, const FfnActivations& saved,
                  std::span<const float> dy, std::span<float> dx, ExpertShard& grads);

}  // namespace moe::experts
