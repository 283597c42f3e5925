// The router of SPEC.md section 3: logits, softmax, top-k with ties to the smaller expert index,
// optional renormalisation of the selected weights; and this rank's share of the auxiliary losses
// of section 7 (summed over ranks later).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "runtime/config.hpp"

namespace moe {

// Everything the router decided for one local batch. Vectors grow to the largest batch seen and are
// reused.
struct RouterOutput {
  std::int64_t num_tokens = 0;
  std::vector<float> probs;           // [T, E] softmax of the logits
  std::vector<float> logsumexp;       // [T]
  std::vector<std::int32_t> expert;   // [T, k] chosen experts, descending probability
  std::vector<float> weight;          // [T, k] their weights (after normalize_topk)
  // This rank's partial sums for the losses, in a fixed order so results are reproducible.
  std::vector<double> prob_sum;       // [E] Σ_t p_{t,e}
  std::vector<std::int64_t> counts;   // [E] top-k assignments before dropping
  double logsumexp_sq_sum = 0;        // Σ_t (logsumexp z_t)²
  std::vector<std::int32_t> order;    // [E] workspace of the top-k selection
};

// Routes x [T, d] with gate_weight [E, d].
void route(const MoeConfig& config, std::span<const float> gate_weight, std::span<const float> x,
           std::int64_t num_tokens, RouterOutput& out);

// What the router's backward needs to know about the whole group (SPEC.md sections 7 and 8).
struct RouterLossGrad {
  std::span<const std::int64_t> expert_counts;  // [E] group-wide assignments before dropping
  std::int64_t total_tokens = 0;                // T of the group
  double grad_aux = 1;                          // upstream gradient of the auxiliary loss
  double grad_z = 1;                            // upstream gradient of the z-loss
};

// Backward of route() for this rank's tokens. d_weight [T, k] is the gradient of the selected
// weights (zero for dropped assignments). It flows through normalize_topk and the softmax, joined
// by the gradients of the two losses; no gradient flows through the top-k choice or through f_e.
// ADDS dz·gate into dx [T, d] and this rank's dzᵀ·x into d_gate [E, d]. d_logits [T, E] is
// workspace.
void route_backward(const MoeConfig& config, std::span<const float> gate_weight,
                    std::span<const float> x, const RouterOutput& out,
                    std::span<const float> d_weight, const RouterLossGrad& losses,
                    std::span<float> d_logits, std::span<float> dx, std::span<float> d_gate);

}  // namespace moe
