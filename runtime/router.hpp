// The router of SPEC.md section 3: logits, scores (softmax, or sigmoid with a selection bias),
// group-limited top-k with ties to the smaller index, optional renormalisation and scaling of the
// selected weights; and this rank's share of the auxiliary losses of section 7 (summed over ranks
// later).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "runtime/config.hpp"
#include "runtime/device/router_ops.hpp"

namespace moe {

// Everything the router decided for one local batch. Vectors grow to the largest batch seen and are
// reused.
struct RouterOutput {
  std::int64_t num_tokens = 0;
  std::vector<float> scores;          // [T, E] s: softmax of the logits, or their sigmoid
  std::vector<float> logits;          // [T, E] z, kept with the sigmoid gate (its z-loss gradient)
  std::vector<float> score_sum;       // [T] Σ_e s (sigmoid: normalises the aux loss's p)
  std::vector<float> logsumexp;       // [T]
  std::vector<std::int32_t> expert;   // [T, k] chosen experts, descending selection score
  std::vector<float> weight;          // [T, k] their weights (after normalize_topk and scaling)
  // This rank's partial sums for the losses, in a fixed order so results are reproducible.
  std::vector<double> prob_sum;       // [E] Σ_t p_{t,e}
  std::vector<std::int64_t> counts;   // [E] top-k assignments before dropping
  double logsumexp_sq_sum = 0;        // Σ_t (logsumexp z_t)²
  // Workspace of the selection (runtime/device/router_ops.hpp).
  std::vector<float> selection;       // [T, E] q, -inf where its group is not selectable
  std::vector<float> group_score;     // [T, G]
};

// The router's part of the configuration, for the router's ops (runtime/device/router_ops.hpp).
device::RouterDims router_dims(const MoeConfig& config);

// Routes x [T, d] with gate_weight [E, d]; score_bias [E] is the selection bias of the sigmoid
// gate (ignored with softmax; may be empty there).
void route(const MoeConfig& config, std::span<const float> gate_weight,
           std::span<const float> score_bias, std::span<const float> x, std::int64_t num_tokens,
           RouterOutput& out);

// What the router's backward needs to know about the whole group (SPEC.md sections 7 and 8).
struct RouterLossGrad {
  std::span<const std::int64_t> expert_counts;  // [E] group-wide assignments before dropping
  std::int64_t total_tokens = 0;                // T of the group
  double grad_aux = 1;                          // upstream gradient of the auxiliary loss
  double grad_z = 1;                            // upstream gradient of the z-loss
};

// Backward of route() for this rank's tokens. d_weight [T, k] is the gradient of the selected
// weights (zero for dropped assignments). It flows through the scaling, normalize_topk and the
// scores, joined by the gradients of the two losses; no gradient flows through the top-k or group
// choice, f_e or the selection bias. ADDS dz·gate into dx [T, d] and this rank's dzᵀ·x into
// d_gate [E, d]. d_logits [T, E] is workspace.
void route_backward(const MoeConfig& config, std::span<const float> gate_weight,
                    std::span<const float> x, const RouterOutput& out,
                    std::span<const float> d_weight, const RouterLossGrad& losses,
                    std::span<float> d_logits, std::span<float> dx, std::span<float> d_gate);

// The selection-bias update of SPEC.md section 3: b_e += rate · sign(mean(c) − c_e), from the
// group-wide counts before dropping of one forward (identical on every rank, so the replicated
// bias stays identical without communication).
void update_selection_bias(std::span<float> bias, std::span<const std::int64_t> counts, double rate);

}  // namespace moe
