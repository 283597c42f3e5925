// The float64 reference of SPEC.md and the deterministic case generator every layer test uses.
//
// This is an independent reading of the SPEC: plain C++20 and the standard library, no moe-ep
// library. It applies SPEC sections 3-8 rank by rank in a single process: each source rank r
// decides capacity and drops for its own T_r tokens (§4); the auxiliary losses and the
// gradients are taken over all tokens of the group (§7, §8). Section 9 says every backend,
// exchange strategy and overlap setting must match exactly this.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace moe::ref {

// SPEC defaults throughout (§1-§7).
struct LayerConfig {
  std::int64_t num_experts = 8, d_model = 16, d_hidden = 32, top_k = 2;
  double capacity_factor = 1.25;  // <= 0: dropless
  std::int64_t min_capacity = 4;
  std::string drop_policy = "position";  // or "score"
  std::string activation = "gelu";       // gelu, gelu_tanh, relu, silu, swiglu
  bool normalize_topk = false;
  double aux_loss_coef = 0.01, z_loss_coef = 0.0;
};

// SPEC §2 shapes, row-major: w1 [h, d], b1 [h], w2 [d, h], b2 [d], w3 [h, d].
// b1/b2 are empty for swiglu, w3 is empty otherwise.
struct ExpertParams {
  std::vector<double> w1, b1, w2, b2, w3;
};

struct LayerParams {
  std::vector<double> gate;  // [E, d]
  std::vector<ExpertParams> experts;  // E entries
};

struct LayerCase {
  LayerConfig config;
  LayerParams params;
  // P entries; the rows of input are the ranks' tokens concatenated in rank order.
  std::vector<std::int64_t> tokens_per_rank;
  std::vector<double> input;                  // [T, d]
  std::vector<double> grad_output;            // [T, d], or empty: forward only
};

// Gradients of L = Σ output·grad_output + aux_loss + z_loss (SPEC §8 with g_aux = g_z = 1).
// params.gate is summed over ranks; every expert's gradient is over all kept assignments.
struct LayerGrads {
  std::vector<double> input;  // [T, d]
  LayerParams params;
};

struct LayerResult {
  std::vector<double> output;  // [T, d]
  double aux_loss = 0, z_loss = 0;
  std::vector<std::int64_t> expert_counts, expert_kept;  // [E], before / after dropping
  std::int64_t dropped_assignments = 0;
  std::int64_t dropped_tokens = 0;  // tokens with every assignment dropped
  // Routing of global token row t: choice j is expert choices[t*k + j] with weight
  // weights[t*k + j] (after normalize_topk, before dropping) and kept[t*k + j] says whether
  // the capacity cut kept it.
  std::vector<std::int64_t> choices;
  std::vector<double> weights;
  std::vector<bool> kept;
  // The smallest gap between two scores that decided something: for each token the k-th minus
  // the (k+1)-th largest probability (when k < E), and with the score policy, for each
  // (rank, expert) that drops, the ranking key of its last kept assignment minus that of its
  // first dropped one. Infinity when nothing was decided by a comparison. SPEC §9 promises tests
  // inputs where this is at least 1e-6; make_case guarantees 1e-5.
  double min_margin = 0;
  // Present when grad_output is given (always when T = 0, where an empty grad_output is [0, d]).
  std::optional<LayerGrads> grads;
};

// Capacity of every expert for the assignments of one source rank with `tokens` tokens
// (SPEC §4). std::nullopt means no limit (dropless).
std::optional<std::int64_t> capacity(const LayerConfig& config, std::int64_t tokens);

// Forward (and backward when grad_output is non-empty). Throws std::invalid_argument when the
// case is malformed (sizes, unknown activation or policy, top_k out of [1, E]).
LayerResult run_reference(const LayerCase& c);

// Which assignments were kept: kept[t*k + j] for every global token row t (forward only).
std::vector<bool> reference_kept(const LayerCase& c);

// L = Σ output·grad_output + aux_loss + z_loss: the scalar whose gradient run_reference returns.
double total_loss(const LayerCase& c, const LayerResult& r);

struct CaseSpec {
  LayerConfig config;
  std::vector<std::int64_t> tokens_per_rank;
  std::uint64_t seed = 1;
  bool with_grad_output = true;
  bool hot_expert = false;  // skew the router so (nearly) every token's first choice is expert 0
};

// A deterministic case drawn from spec.seed: every value exactly representable in float (the
// implementation under test takes fp32), weights scaled like a real init (~1/sqrt(fan_in)),
// router logits spread so that run_reference(case).min_margin >= kMinMargin (redrawn until so).
// Throws std::runtime_error if no such draw is found in a bounded number of attempts.
inline constexpr double kMinMargin = 1e-5;
LayerCase make_case(const CaseSpec& spec);

}  // namespace moe::ref
