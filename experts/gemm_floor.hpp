// The expert GEMMs alone: the same matrix products ffn_forward and ffn_backward perform (same
// shapes, same transposes, same BLAS) and nothing else. Benchmarks time these beside the layer to
// report its distance from the compute floor under the same machine load.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "experts/expert_shard.hpp"

namespace moe::experts {

// Operands for the products; sized on first use, then reused.
struct GemmFloorWorkspace {
  std::vector<float> rows_d, rows_h, rows_h2, out_d;
  ExpertShard grads;
};

// Runs the forward (or backward) products of `shard` for rows_per_expert[e] rows of local expert e.
// Returns their floating-point operations, 2·M·N·K summed.
double run_forward_gemms(const ExpertShard& shard, std::span<const std::int64_t> rows_per_expert,
                         GemmFloorWorkspace& ws);
double run_backward_gemms(const ExpertShard& shard, std::span<const std::int64_t> rows_per_expert,
                          GemmFloorWorkspace& ws);

}  // namespace moe::experts
