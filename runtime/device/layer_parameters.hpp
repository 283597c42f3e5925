// The parameters of the device layer as the host holds them: what is uploaded before a pass and
// what its gradients are downloaded into. The same shapes and SPEC.md section 2 names as MoeLayer's
// (experts::ExpertShard for this rank's experts and for the shared expert).
#pragma once

#include <vector>

#include "experts/expert_shard.hpp"
#include "runtime/config.hpp"
#include "runtime/layer_case.hpp"

namespace moe::device {

struct LayerParameters {
  std::vector<float> gate_weight;      // [E, d], replicated
  std::vector<float> selection_bias;   // [E], replicated (sigmoid gate; zeros otherwise)
  experts::ExpertShard experts;        // this rank's experts
  experts::ExpertShard shared_expert;  // one expert, or none
};

// Zeros of the right shapes for rank `rank` of `ep_size`.
LayerParameters zero_parameters(const MoeConfig& config, int rank, int ep_size);

// The parameters of `layer_case` that rank `rank` of `ep_size` holds (its experts only). The
// selection bias stays zero when the case has none (SPEC.md section 2).
LayerParameters case_parameters(const LayerCase& layer_case, int rank, int ep_size);

}  // namespace moe::device
