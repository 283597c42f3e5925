// The float64 reference of SPEC.md (version 2) and the deterministic case generator every layer
// test uses.
//
// This is an independent reading of the SPEC: plain C++20 and the standard library, no moe-ep
// library. It applies SPEC sections 3-8 in a single process: with capacity_scope = rank each
// source rank r decides capacity and drops for its own T_r tokens, with capacity_scope = global
// one decision covers the group's tokens concatenated in rank order (§4); the auxiliary losses
// and the gradients are taken over all tokens of the group (§7, §8). Section 9 says every
// backend, exchange strategy and overlap setting must match exactly this.
//
// Every field that version 2 added defaults to the version-1 layer.
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
  // Version 2 (§3-§5).
  std::string gate = "softmax";  // or "sigmoid" (DeepSeek-V3: scores sigmoid(z), selection bias)
  std::int64_t n_group = 1;      // G: divides num_experts
  std::int64_t topk_group = 0;   // M in [1, G]; 0 means M = G (every group selectable)
  double routed_scaling_factor = 1.0;  // finite, > 0; multiplies w after normalize_topk
  std::string capacity_scope = "rank";  // or "global": one capacity over the whole group
  double bias_update_rate = 0.0;  // γ: finite, >= 0; > 0 only with gate = sigmoid
  std::int64_t d_shared_hidden = 0;  // h_s of the shared expert; 0: no shared expert
};

// SPEC §2 shapes, row-major: w1 [h, d], b1 [h], w2 [d, h], b2 [d], w3 [h, d].
// b1/b2 are empty for swiglu, w3 is empty otherwise. A shared expert has the same form with
// h = d_shared_hidden.
struct ExpertParams {
  std::vector<double> w1, b1, w2, b2, w3;
};

struct LayerParams {
  std::vector<double> gate;  // [E, d]
  std::vector<ExpertParams> experts;  // E entries
  // gate.e_score_correction_bias [E]: only with gate = sigmoid; empty means zeros. A buffer: it
  // never has a gradient (LayerGrads leaves it empty).
  std::vector<double> score_bias;
  // Present iff config.d_shared_hidden > 0.
  std::optional<ExpertParams> shared_expert;
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
// params.gate and params.shared_expert are summed over ranks; every expert's gradient is over
// all kept assignments; params.score_bias is empty (no gradient flows into it).
struct LayerGrads {
  std::vector<double> input;  // [T, d]
  LayerParams params;
};

struct LayerResult {
  std::vector<double> output;  // [T, d]
  double aux_loss = 0, z_loss = 0;
  std::vector<std::int64_t> expert_counts, expert_kept;  // [E], before / after dropping
  std::int64_t dropped_assignments = 0;
  // Tokens with every routed assignment dropped (SPEC 10); with a shared expert they still get
  // f_s(x), but they count here all the same.
  std::int64_t dropped_tokens = 0;
  // Routing of global token row t: choice j is expert choices[t*k + j] with weight
  // weights[t*k + j] (the final w of SPEC 3: after normalize_topk and routed_scaling_factor,
  // before dropping) and kept[t*k + j] says whether the capacity cut kept it.
  std::vector<std::int64_t> choices;
  std::vector<double> weights;
  std::vector<bool> kept;
  // The smallest gap between two values that decided something: for each token the k-th minus
  // the (k+1)-th largest selection score q among its selectable experts (when there are more
  // than k); with group-limited routing (M < G) the M-th minus the (M+1)-th largest group
  // score; with the score policy, for each capacity scope (a source rank, or the whole group)
  // and expert that drops, the weight of its last kept assignment minus that of its first
  // dropped one. Infinity when nothing was decided by a comparison. SPEC §9 promises tests
  // inputs where this is at least 1e-6; make_case guarantees 1e-5.
  double min_margin = 0;
  // gate = sigmoid: the selection bias after one update from this forward's counts before
  // dropping, b + γ·sign(c̄ − c_e) (SPEC 3); equal to the input bias (zeros when absent) when
  // γ = 0. Empty with gate = softmax.
  std::vector<double> score_bias_updated;
  // Present when grad_output is given (always when T = 0, where an empty grad_output is [0, d]).
  std::optional<LayerGrads> grads;
};

// Capacity of every expert for `tokens` tokens (SPEC §4): with capacity_scope = rank pass one
// source rank's T_r, with capacity_scope = global the group's T = Σ_r T_r (the formula is the
// same). std::nullopt means no limit (dropless).
std::optional<std::int64_t> capacity(const LayerConfig& config, std::int64_t tokens);

// The selection-bias update of SPEC §3: bias[e] + γ·sign(c̄ − c_e) for the global counts before
// dropping `counts` ([E]); `bias` empty means zeros. Returns `bias` (or zeros) unchanged when
// γ = 0, and an empty vector with gate = softmax (that gate has no selection bias). Throws
// std::invalid_argument on sizes that do not match num_experts.
std::vector<double> updated_score_bias(const LayerConfig& config, const std::vector<double>& bias,
                                       const std::vector<std::int64_t>& counts);

// Forward (and backward when grad_output is non-empty). Throws std::invalid_argument when the
// case is malformed (sizes, unknown names, any value out of the ranges of SPEC §1-§5).
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
  // gate = sigmoid only (std::invalid_argument otherwise): draw a non-zero selection bias, small
  // against the scores but large enough to change some choices.
  bool with_score_bias = false;
};

// A deterministic case drawn from spec.seed: every value exactly representable in float (the
// implementation under test takes fp32), weights scaled like a real init (~1/sqrt(fan_in)),
// router logits spread so that run_reference(case).min_margin >= kMinMargin (redrawn until so).
// The shared expert (when config.d_shared_hidden > 0) and the selection bias come from their own
// streams, so a version-1 spec draws exactly the case it drew before version 2.
// Throws std::runtime_error if no such draw is found in a bounded number of attempts.
inline constexpr double kMinMargin = 1e-5;
LayerCase make_case(const CaseSpec& spec);

}  // namespace moe::ref
