#include "runtime/router.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "experts/gemm.hpp"

namespace moe {
namespace {

template <class T>
void grow(std::vector<T>& v, std::int64_t n) {
  if (static_cast<std::int64_t>(v.size()) < n) v.resize(static_cast<std::size_t>(n));
}

}  // namespace

void route(const MoeConfig& config, std::span<const float> gate_weight, std::span<const float> x,
           std::int64_t num_tokens, RouterOutput& out) {
  const std::int64_t num_experts = config.num_experts;
  const std::int64_t d = config.d_model;
  const std::int64_t k = config.top_k;
  out.num_tokens = num_tokens;
  grow(out.probs, num_tokens * num_experts);
  grow(out.logsumexp, num_tokens);
  grow(out.expert, num_tokens * k);
  grow(out.weight, num_tokens * k);
  out.prob_sum.assign(static_cast<std::size_t>(num_experts), 0.0);
  out.counts.assign(static_cast<std::size_t>(num_experts), 0);
  out.logsumexp_sq_sum = 0;
  out.order.resize(static_cast<std::size_t>(num_experts));
  if (num_tokens == 0) return;

  // Logits into probs, then softmax in place, row by row.
  using experts::Op;
  experts::gemm(Op::none, Op::transpose, num_tokens, num_experts, d, 1.0f,
                x.first(static_cast<std::size_t>(num_tokens * d)), d, gate_weight, d, 0.0f,
                std::span<float>(out.probs).first(static_cast<std::size_t>(num_tokens * num_experts)),
                num_experts);

  for (std::int64_t t = 0; t < num_tokens; ++t) {
    float* p = out.probs.data() + t * num_experts;
    const float max_logit = *std::max_element(p, p + num_experts);
    double sum = 0;
    for (std::int64_t e = 0; e < num_experts; ++e) {
      p[e] = std::exp(p[e] - max_logit);
      sum += p[e];
    }
    const float inv_sum = static_cast<float>(1.0 / sum);
    for (std::int64_t e = 0; e < num_experts; ++e) p[e] *= inv_sum;
    const double lse = static_cast<double>(max_logit) + std::log(sum);
    out.logsumexp[static_cast<std::size_t>(t)] = static_cast<float>(lse);
    out.logsumexp_sq_sum += lse * lse;

    // Top-k: descending probability, ties to the smaller expert index.
    std::iota(out.order.begin(), out.order.end(), 0);
    std::partial_sort(out.order.begin(), out.order.begin() + k, out.order.end(),
                      [p](std::int32_t a, std::int32_t b) { return p[a] > p[b] || (p[a] == p[b] && a < b); });
    std::int32_t* chosen = out.expert.data() + t * k;
    float* w = out.weight.data() + t * k;
    for (std::int64_t j = 0; j < k; ++j) {
      chosen[j] = out.order[static_cast<std::size_t>(j)];
      w[j] = p[chosen[j]];
    }
    if (config.normalize_topk) {
      // With k = 1 the weight is exactly 1 (w / w), as SPEC.md section 8 asks.
      float total = 0;
      for (std::int64_t j = 0; j < k; ++j) total += w[j];
      for (std::int64_t j = 0; j < k; ++j) w[j] /= total;
    }
    for (std::int64_t e = 0; e < num_experts; ++e) out.prob_sum[static_cast<std::size_t>(e)] += p[e];
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
  if (num_tokens == 0) return;
  const double total = static_cast<double>(losses.total_tokens);

  // dL_aux/dp_{t,e} = g_aux · coef · E · f_e / T, the same for every token.
  // dL_z/dz_{t,e} = g_z · coef · 2 · lse_t / T · p_{t,e}.
  const double aux_scale = losses.grad_aux * config.aux_loss_coef * static_cast<double>(num_experts) /
                           (total * total * static_cast<double>(k));
  const double z_scale = losses.grad_z * config.z_loss_coef * 2.0 / total;

  for (std::int64_t t = 0; t < num_tokens; ++t) {
    const float* p = out.probs.data() + t * num_experts;
    const std::int32_t* chosen = out.expert.data() + t * k;
    const float* w = out.weight.data() + t * k;
    const float* dw = d_weight.data() + t * k;
    float* dz = d_logits.data() + t * num_experts;

    // dp in dz's storage first: the aux term for every expert, then the selected weights' part.
    for (std::int64_t e = 0; e < num_experts; ++e) {
      dz[e] = static_cast<float>(aux_scale * static_cast<double>(losses.expert_counts[e]));
    }
    if (!config.normalize_topk) {
      for (std::int64_t j = 0; j < k; ++j) dz[chosen[j]] += dw[j];
    } else if (k > 1) {
      // w_j = p_j / S with S the sum of the k selected p: dp_j = (dw_j - Σ_i dw_i w_i) / S.
      // With k = 1 the weight is exactly 1 and nothing flows (SPEC.md section 8).
      double selected_sum = 0, dw_dot_w = 0;
      for (std::int64_t j = 0; j < k; ++j) {
        selected_sum += p[chosen[j]];
        dw_dot_w += static_cast<double>(dw[j]) * w[j];
      }
      for (std::int64_t j = 0; j < k; ++j) {
        dz[chosen[j]] += static_cast<float>((dw[j] - dw_dot_w) / selected_sum);
      }
    }
    // Softmax backward, plus the z-loss which acts on the logits directly.
    double p_dot_dp = 0;
    for (std::int64_t e = 0; e < num_experts; ++e) p_dot_dp += static_cast<double>(p[e]) * dz[e];
    const double z_term = z_scale * out.logsumexp[static_cast<std::size_t>(t)];
    for (std::int64_t e = 0; e < num_experts; ++e) {
      dz[e] = static_cast<float>(p[e] * (dz[e] - p_dot_dp + z_term));
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

}  // namespace moe
