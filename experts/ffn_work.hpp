// The parts of ffn_forward / ffn_backward a caller may leave out or do another way, for the GEMM
// floor (experts/gemm_floor.hpp) and benchmarks: the same code path with less around it.
// Internal to experts/ and its tests.
#pragma once

#include "experts/grouped_ffn.hpp"

namespace moe::experts {

struct FfnWork {
  // false: the GEMMs only (no activation, derivative, bias gradients or bf16 conversion of
  // intermediates). The results are then meaningless; only the time is.
  bool elementwise = true;
  // false: biases added in a pass of their own instead of inside the GEMMs (for comparison).
  bool fuse_bias = true;
};

void ffn_forward(const ExpertShard& shard, std::span<const float> x,
                 std::span<const std::int64_t> offsets, std::span<float> y, FfnActivations& saved,
                 Compute compute, const FfnWork& work);
void ffn_backward(const ExpertShard& shard, std::span<const float> x,
                  std::span<const std::int64_t> offsets, const FfnActivations& saved,
                  std::span<const float> dy, std::span<float> dx, ExpertShard& grads,
                  const FfnWork& work);

}  // namespace moe::experts
