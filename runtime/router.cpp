#include "runtime/router.hpp"

#include "experts/device/launch_host.hpp"
#include "experts/gemm.hpp"

// The per-token and per-expert work is in runtime/device/router_ops.hpp, shared with the CUDA
// kernels; this file adds the GEMMs around it and runs the ops through the host launcher.

namespace moe {
namespace {

template <class T>
void grow(std::vector<T>& v, std::int64_t n) {
  if (static_cast<std::int64_t>(v.size()) < n) v.resize(static_cast<std::size_t>(n));
}

}  // namespace

device::RouterDims router_dims(const MoeConfig& config) {
  return {.num_experts = config.num_experts,
          .top_k = config.top_k,
          .n_group = config.n_group,
          .groups_per_token = config.groups_per_token(),
          .sigmoid = config.gate == GateKind::sigmoid,
          .normalize_topk = config.normalize_topk,
          .routed_scaling_factor = static_cast<float>(config.routed_scaling_factor)};
}

void route(const MoeConfig& config, std::span<const float> gate_weight,
           std::span<const float> score_bias, std::span<const float> x, std::int64_t num_tokens,
           RouterOutput& out) {
  const std::int64_t num_experts = config.num_experts;
  const std::int64_t d = config.d_model;
  const std::int64_t k = config.top_k;
  const bool sigmoid = config.gate == GateKind::sigmoid;
  out.num_tokens = num_tokens;
  grow(out.scores, num_tokens * num_experts);
  if (sigmoid) {
    grow(out.logits, num_tokens * num_experts);
    grow(out.score_sum, num_tokens);
  }
  grow(out.logsumexp, num_tokens);
  grow(out.expert, num_tokens * k);
  grow(out.weight, num_tokens * k);
  grow(out.selection, num_tokens * num_experts);
  grow(out.group_score, num_tokens * config.n_group);
  out.prob_sum.assign(static_cast<std::size_t>(num_experts), 0.0);
  out.counts.assign(static_cast<std::size_t>(num_experts), 0);
  out.logsumexp_sq_sum = 0;
  if (num_tokens == 0) return;

  // Logits (into the scores with softmax, which then turns them into probabilities in place).
  using experts::Op;
  std::vector<float>& logits = sigmoid ? out.logits : out.scores;
  experts::gemm(Op::none, Op::transpose, num_tokens, num_experts, d, 1.0f,
                x.first(static_cast<std::size_t>(num_tokens * d)), d, gate_weight, d, 0.0f,
                std::span<float>(logits).first(static_cast<std::size_t>(num_tokens * num_experts)),
                num_experts);

  device::launch_host(num_tokens, device::RouteTokenOp{
      .dims = router_dims(config),
      .logits = logits.data(),
      .bias = sigmoid ? score_bias.data() : nullptr,
      .scores = out.scores.data(),
      .selection = out.selection.data(),
      .group_score = out.group_score.data(),
      .logsumexp = out.logsumexp.data(),
      .score_sum = sigmoid ? out.score_sum.data() : nullptr,
      .expert = out.expert.data(),
      .weight = out.weight.data()});
  device::launch_host(num_experts, device::ProbSumOp{
      .num_tokens = num_tokens,
      .num_experts = num_experts,
      .sigmoid = sigmoid,
      .scores = out.scores.data(),
      .score_sum = sigmoid ? out.score_sum.data() : nullptr,
      .prob_sum = out.prob_sum.data()});
  device::launch_host(num_experts, device::CountOp{
      .num_assignments = num_tokens * k, .expert = out.expert.data(), .counts = out.counts.data()});
  device::launch_host(1, device::LogsumexpSquareSumOp{
      .num_tokens = num_tokens, .logsumexp = out.logsumexp.data(), .sum = &out.logsumexp_sq_sum});
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

  // dL_aux/dp_{t,e} = g_aux · coef · E · f_e / T, the same for every token.
  // dL_z/dz_{t,e} = g_z · coef · 2 · lse_t / T · softmax(z_t)_e.
  device::launch_host(num_tokens, device::RouteBackwardTokenOp{
      .dims = router_dims(config),
      .aux_scale = losses.grad_aux * config.aux_loss_coef * static_cast<double>(num_experts) /
                   (total * total * static_cast<double>(k)),
      .z_scale = losses.grad_z * config.z_loss_coef * 2.0 / total,
      .expert_counts = losses.expert_counts.data(),
      .scores = out.scores.data(),
      .logits = sigmoid ? out.logits.data() : nullptr,
      .score_sum = sigmoid ? out.score_sum.data() : nullptr,
      .logsumexp = out.logsumexp.data(),
      .expert = out.expert.data(),
      .d_weight = d_weight.data(),
      .d_logits = d_logits.data()});

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
  device::launch_host(static_cast<std::int64_t>(counts.size()), device::SelectionBiasUpdateOp{
      .num_experts = static_cast<std::int64_t>(counts.size()),
      .rate = rate,
      .counts = counts.data(),
      .bias = bias.data()});
}

}  // namespace moe
