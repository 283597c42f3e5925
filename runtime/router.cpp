#include "runtime/router.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "experts/gemm.hpp"

namespace moe {
namespace {

template <class T>
void grow(std::vector<T>& v, std::int64_t n) {
  if (static_cast<std::int64_t>(v.size()) < n) v.resize(static_cast<std::size_t>(n));
}

// Indices [0, n) in `order`, the first `count` sorted by value descending, ties to the smaller
// index (SPEC.md section 3).
template <class Index>
void top_indices(const float* value, std::vector<Index>& order, std::int64_t n, std::int64_t count) {
  std::iota(order.begin(), order.begin() + n, Index{0});
  std::partial_sort(order.begin(), order.begin() + count, order.begin() + n, [value](Index a, Index b) {
    return value[a] > value[b] || (value[a] == value[b] && a < b);
  });
}

// Group-limited routing: only the experts of the `groups_per_token` groups with the largest group
// scores (the sum of the group's min(2, E/G) largest q) stay selectable; q of the others becomes
// -inf, in place.
void limit_to_groups(const MoeConfig& config, float* q, RouterOutput& out) {
  const std::int64_t num_groups = config.n_group, per_group = config.num_experts / num_groups;
  const std::int64_t top = std::min<std::int64_t>(2, per_group);
  for (std::int64_t g = 0; g < num_groups; ++g) {
    // The group's two largest (or one, with one expert per group).
    float first = -std::numeric_limits<float>::infinity(), second = first;
    for (std::int64_t e = g * per_group; e < (g + 1) * per_group; ++e) {
      if (q[e] > first) {
        second = first;
        first = q[e];
      } else if (q[e] > second) {
        second = q[e];
      }
    }
    out.group_score[static_cast<std::size_t>(g)] = top == 1 ? first : first + second;
  }
  top_indices(out.group_score.data(), out.group_order, num_groups, config.groups_per_token());
  // Mark the chosen groups in group_score (scores are no longer needed), then mask the rest.
  for (std::int64_t i = 0; i < config.groups_per_token(); ++i) {
    out.group_score[static_cast<std::size_t>(out.group_order[static_cast<std::size_t>(i)])] =
        std::numeric_limits<float>::infinity();
  }
  for (std::int64_t g = 0; g < num_groups; ++g) {
    if (out.group_score[static_cast<std::size_t>(g)] == std::numeric_limits<float>::infinity()) continue;
    std::fill(q + g * per_group, q + (g + 1) * per_group, -std::numeric_limits<float>::infinity());
  }
}

// logsumexp of one row of logits, in double.
double logsumexp(const float* z, std::int64_t n) {
  const float max_logit = *std::max_element(z, z + n);
  double sum = 0;
  for (std::int64_t e = 0; e < n; ++e) sum += std::exp(static_cast<double>(z[e] - max_logit));
  return static_cast<double>(max_logit) + std::log(sum);
}

}  // namespace

void route(const MoeConfig& config, std::span<const float> gate_weight,
           std::span<const float> score_bias, std::span<const float> x, std::int64_t num_tokens,
           RouterOutput& out) {
  const std::int64_t num_experts = config.num_experts;
  const std::int64_t d = config.d_model;
  const std::int64_t k = config.top_k;
  const bool sigmoid = config.gate == GateKind::sigmoid;
  const bool grouped = config.groups_per_token() < config.n_group;
  out.num_tokens = num_tokens;
  grow(out.scores, num_tokens * num_experts);
  if (sigmoid) {
    grow(out.logits, num_tokens * num_experts);
    grow(out.score_sum, num_tokens);
  }
  grow(out.logsumexp, num_tokens);
  grow(out.expert, num_tokens * k);
  grow(out.weight, num_tokens * k);
  out.prob_sum.assign(static_cast<std::size_t>(num_experts), 0.0);
  out.counts.assign(static_cast<std::size_t>(num_experts), 0);
  out.logsumexp_sq_sum = 0;
  out.order.resize(static_cast<std::size_t>(num_experts));
  out.selection.resize(static_cast<std::size_t>(num_experts));
  out.group_score.resize(static_cast<std::size_t>(config.n_group));
  out.group_order.resize(static_cast<std::size_t>(config.n_group));
  if (num_tokens == 0) return;

  // Logits (into the scores with softmax, which then turns them into probabilities in place).
  using experts::Op;
  std::vector<float>& logits = sigmoid ? out.logits : out.scores;
  experts::gemm(Op::none, Op::transpose, num_tokens, num_experts, d, 1.0f,
                x.first(static_cast<std::size_t>(num_tokens * d)), d, gate_weight, d, 0.0f,
                std::span<float>(logits).first(static_cast<std::size_t>(num_tokens * num_experts)),
                num_experts);

  for (std::int64_t t = 0; t < num_tokens; ++t) {
    const float* z = logits.data() + t * num_experts;
    float* s = out.scores.data() + t * num_experts;
    const double lse = logsumexp(z, num_experts);
    out.logsumexp[static_cast<std::size_t>(t)] = static_cast<float>(lse);
    out.logsumexp_sq_sum += lse * lse;

    // Scores s, and the selection scores q (= s, plus the bias with sigmoid) in `selection`.
    const float* q = s;
    double score_sum = 1;
    if (sigmoid) {
      score_sum = 0;
      for (std::int64_t e = 0; e < num_experts; ++e) {
        s[e] = 1.0f / (1.0f + std::exp(-z[e]));
        score_sum += s[e];
        out.selection[static_cast<std::size_t>(e)] = s[e] + score_bias[static_cast<std::size_t>(e)];
      }
      out.score_sum[static_cast<std::size_t>(t)] = static_cast<float>(score_sum);
      q = out.selection.data();
    } else {
      const float max_logit = *std::max_element(s, s + num_experts);
      double sum = 0;
      for (std::int64_t e = 0; e < num_experts; ++e) {
        s[e] = std::exp(s[e] - max_logit);
        sum += s[e];
      }
      const float inv_sum = static_cast<float>(1.0 / sum);
      for (std::int64_t e = 0; e < num_experts; ++e) s[e] *= inv_sum;
    }
    if (grouped) {
      if (!sigmoid) std::copy(s, s + num_experts, out.selection.begin());
      limit_to_groups(config, out.selection.data(), out);
      q = out.selection.data();
    }

    // Top-k by q: descending, ties to the smaller expert index; weights are the unbiased scores.
    top_indices(q, out.order, num_experts, k);
    std::int32_t* chosen = out.expert.data() + t * k;
    float* w = out.weight.data() + t * k;
    for (std::int64_t j = 0; j < k; ++j) {
      chosen[j] = out.order[static_cast<std::size_t>(j)];
      w[j] = s[chosen[j]];
    }
    if (config.normalize_topk) {
      // With k = 1 the weight is exactly 1 (w / w), as SPEC.md section 8 asks.
      float total = 0;
      for (std::int64_t j = 0; j < k; ++j) total += w[j];
      for (std::int64_t j = 0; j < k; ++j) w[j] /= total;
    }
    if (config.routed_scaling_factor != 1.0) {
      const auto scale = static_cast<float>(config.routed_scaling_factor);
      for (std::int64_t j = 0; j < k; ++j) w[j] *= scale;
    }
    // The aux loss's p: the scores, normalised per token with sigmoid.
    for (std::int64_t e = 0; e < num_experts; ++e) {
      out.prob_sum[static_cast<std::size_t>(e)] += static_cast<double>(s[e]) / score_sum;
    }
    for (std::int64_t j = 0; j < k; ++j) ++out.counts[static_cast<std::size_t>(chosen[j])];
  }
}

void route_backward(const MoeConfig& config, std::span<const float> gate_weight,
                    std::span<const float> x, const RouterOutput& out,
                    std::span<const float> d_weight, const RouterLossGrad& losses,
                    std::span<float> d_logits, std::span<float> dx, std::span<float> d_gate) {
  const std::int64_t num_tokens = out.num_tokens;
  const std::int64_t num_experts = config.num_experts;
  const std::int64_t d = config.d_model;
  const std::int64_t k = config.top_k;
  const bool sigmoid = config.gate == GateKind::sigmoid;
  if (num_tokens == 0) return;
  const double total = static_cast<double>(losses.total_tokens);
  const double scale = config.routed_scaling_factor;

  // dL_aux/dp_{t,e} = g_aux · coef · E · f_e / T, the same for every token.
  // dL_z/dz_{t,e} = g_z · coef · 2 · lse_t / T · softmax(z_t)_e.
  const double aux_scale = losses.grad_aux * config.aux_loss_coef * static_cast<double>(num_experts) /
                           (total * total * static_cast<double>(k));
  const double z_scale = losses.grad_z * config.z_loss_coef * 2.0 / total;

  for (std::int64_t t = 0; t < num_tokens; ++t) {
    const float* s = out.scores.data() + t * num_experts;
    const std::int32_t* chosen = out.expert.data() + t * k;
    const float* dw = d_weight.data() + t * k;
    float* ds = d_logits.data() + t * num_experts;  // ds first, turned into dz below

    // The aux term. With sigmoid, p = s / Σs: ds_m = (a_m − Σ_e a_e p_e) / Σs.
    for (std::int64_t e = 0; e < num_experts; ++e) {
      ds[e] = static_cast<float>(aux_scale * static_cast<double>(losses.expert_counts[e]));
    }
    if (sigmoid) {
      const double sum = out.score_sum[static_cast<std::size_t>(t)];
      double a_dot_p = 0;
      for (std::int64_t e = 0; e < num_experts; ++e) a_dot_p += static_cast<double>(ds[e]) * s[e] / sum;
      for (std::int64_t e = 0; e < num_experts; ++e) ds[e] = static_cast<float>((ds[e] - a_dot_p) / sum);
    }
    // The selected weights' part: w_j = scale · s_j (/ S with normalize_topk, S = Σ_selected s).
    if (!config.normalize_topk) {
      for (std::int64_t j = 0; j < k; ++j) ds[chosen[j]] += static_cast<float>(scale * dw[j]);
    } else if (k > 1) {
      // ds_j = scale · (dw_j − Σ_i dw_i ŵ_i) / S with ŵ_i = s_i / S.
      // With k = 1 the weight is exactly `scale` and nothing flows (SPEC.md section 8).
      double selected_sum = 0;
      for (std::int64_t j = 0; j < k; ++j) selected_sum += s[chosen[j]];
      double dw_dot_w = 0;
      for (std::int64_t j = 0; j < k; ++j) dw_dot_w += static_cast<double>(dw[j]) * s[chosen[j]] / selected_sum;
      for (std::int64_t j = 0; j < k; ++j) {
        ds[chosen[j]] += static_cast<float>(scale * (dw[j] - dw_dot_w) / selected_sum);
      }
    }
    const double lse = out.logsumexp[static_cast<std::size_t>(t)];
    const double z_term = z_scale * lse;
    if (sigmoid) {
      // s' = s (1 − s); the z-loss acts on the logits through their softmax.
      const float* z = out.logits.data() + t * num_experts;
      for (std::int64_t e = 0; e < num_experts; ++e) {
        const double softmax = std::exp(static_cast<double>(z[e]) - lse);
        ds[e] = static_cast<float>(ds[e] * s[e] * (1.0 - s[e]) + z_term * softmax);
      }
    } else {
      // Softmax backward, plus the z-loss which acts on the logits directly.
      double p_dot_dp = 0;
      for (std::int64_t e = 0; e < num_experts; ++e) p_dot_dp += static_cast<double>(s[e]) * ds[e];
      for (std::int64_t e = 0; e < num_experts; ++e) {
        ds[e] = static_cast<float>(s[e] * (ds[e] - p_dot_dp + z_term));
      }
    }
  }

  using experts::Op;
  const auto tokens_by = [&](std::int64_t cols) { return static_cast<std::size_t>(num_tokens * cols); };
  experts::gemm(Op::none, Op::none, num_tokens, d, num_experts, 1.0f,
                d_logits.first(tokens_by(num_experts)), num_experts, gate_weight, d, 1.0f,
                dx.first(tokens_by(d)), d);
  experts::gemm(Op::transpose, Op::none, num_experts, d, num_tokens, 1.0f,
                d_logits.first(tokens_by(num_experts)), num_experts, x.first(tokens_by(d)), d, 1.0f,
                d_gate, d);
}

void update_selection_bias(std::span<float> bias, std::span<const std::int64_t> counts, double rate) {
  if (rate == 0) return;
  // sign(mean − c_e) in integers, so that sign(0) = 0 exactly: mean − c_e has the sign of Σc − E·c_e.
  const std::int64_t total = std::accumulate(counts.begin(), counts.end(), std::int64_t{0});
  const auto num_experts = static_cast<std::int64_t>(counts.size());
  for (std::size_t e = 0; e < counts.size(); ++e) {
    const std::int64_t diff = total - num_experts * counts[e];
    const double sign = diff > 0 ? 1.0 : diff < 0 ? -1.0 : 0.0;
    bias[e] = static_cast<float>(static_cast<double>(bias[e]) + rate * sign);
  }
}

}  // namespace moe
