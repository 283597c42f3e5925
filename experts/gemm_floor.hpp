// The expert GEMMs alone: ffn_forward and ffn_backward themselves with their elementwise work
// left out (experts/ffn_work.hpp), so the same GEMM calls, shapes, precision and fused biases,
// and nothing else. Benchmarks time these beside the layer to report its distance from the
// compute floor under the same machine load.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "experts/compute.hpp"
#include "experts/expert_shard.hpp"
#include "experts/grouped_ffn.hpp"

namespace moe::experts {

// Operands for the products; sized on first use, then reused.
struct GemmFloorWorkspace {
  std::vector<float> rows_d, out_d;
  std::vector<std::int64_t> offsets;
  FfnActivations saved;
  ExpertShard grads;
};

// Runs the forward (or backward) products of `shard` for rows_per_expert[e] rows of local expert
// e in precision `compute`. Returns their floating-point operations, 2·M·N·K summed.
double run_forward_gemms(const ExpertShard& shard, std::span<const std::int64_t> rows_per_expert,
                         GemmFloorWorkspace& ws, Compute compute = Compute::fp32);
double run_backward_gemms(const ExpertShard& shard, std::span<const std::int64_t> rows_per_expert,
                          GemmFloorWorkspace& ws, Compute compute = Compute::fp32);

}  // namespace moe::experts
