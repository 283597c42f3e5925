#include "runtime/moe_layer.hpp"

#include <algorithm>
#include <chrono>
#include <string>

#include "runtime/error.hpp"
#include "runtime/local_failure.hpp"
#include "runtime/workspace.hpp"

namespace moe {
namespace {

using Clock = std::chrono::steady_clock;

std::string check_shapes(std::span<const float> x, std::span<const float> y, std::int64_t d) {
  if (x.size() % static_cast<std::size_t>(d) != 0) {
    return "input has " + std::to_string(x.size()) + " elements, not a multiple of d_model=" +
           std::to_string(d);
  }
  if (y.size() != x.size()) {
    return "output has " + std::to_string(y.size()) + " elements but the input has " +
           std::to_string(x.size());
  }
  return {};
}

}  // namespace

MoeLayer::MoeLayer(const MoeConfig& config, comm::Communicator& ep_comm)
    : dispatcher_(config, ep_comm, /*in_flight_work=*/config.has_shared_expert()) {
  const MoeConfig& c = dispatcher_.config();
  gate_weight_.assign(static_cast<std::size_t>(c.num_experts * c.d_model), 0.0f);
  selection_bias_.assign(static_cast<std::size_t>(c.num_experts), 0.0f);
  experts_ = experts::ExpertShard(local_experts(), {c.d_model, c.d_hidden, c.activation});
  shared_expert_ = experts::ExpertShard(
      c.has_shared_expert() ? 1 : 0, {c.d_model, c.d_shared_hidden, c.activation});
  gate_weight_grad_.assign(gate_weight_.size(), 0.0f);
  expert_grads_ = experts::ExpertShard(experts_.num_experts(), experts_.shape());
  shared_expert_grads_ = experts::ExpertShard(shared_expert_.num_experts(), shared_expert_.shape());
  loss_sums_.assign(static_cast<std::size_t>(c.num_experts + 1), 0.0);
}

MoeLayer::~MoeLayer() = default;

void MoeLayer::update_selection_bias(const ForwardResult& result) {
  moe::update_selection_bias(selection_bias_, result.stats.expert_counts, dispatcher_.config().bias_update_rate);
}

void MoeLayer::parameters_changed() {
  experts_.mark_changed();
  shared_expert_.mark_changed();
}

void MoeLayer::zero_grad() {
  std::fill(gate_weight_grad_.begin(), gate_weight_grad_.end(), 0.0f);
  expert_grads_.set_zero();
  shared_expert_grads_.set_zero();
}

const ForwardResult& MoeLayer::forward(std::span<const float> x, std::span<float> y,
                                       ForwardContext& ctx) {
  const MoeConfig& config = dispatcher_.config();
  const std::int64_t d = config.d_model;
  ForwardStats& stats = ctx.dispatch_.stats();
  PhaseTimer clock(stats.phase_seconds, "forward");
  RouterOutput& router = ctx.router_;
  std::string local_error = check_shapes(x, y, d);
  if (local_error.empty() && config.check_finite) local_error = first_non_finite("input", x, d);
  std::int64_t num_tokens = local_error.empty() ? static_cast<std::int64_t>(x.size()) / d : 0;
  // Anything that fails here (an allocation, say) travels with the counts like a bad shape.
  if (local_error.empty()) {
    local_error = failure_of([&] { route(config, gate_weight_, selection_bias_, x, num_tokens, router); });
  }
  if (!local_error.empty()) {
    num_tokens = 0;
    route(config, gate_weight_, selection_bias_, {}, 0, router);
  }
  const auto assignments = static_cast<std::size_t>(num_tokens * config.top_k);
  const Routing routing{num_tokens, std::span<const std::int32_t>(router.expert).first(assignments),
                        std::span<const float>(router.weight).first(assignments)};
  // The experts' saved activations grow with the receive side, so no chunk allocates mid-pipeline.
  const auto reserve = [&] {
    const DispatchPlan& plan = ctx.dispatch_.plan();
    if (static_cast<int>(ctx.ffn_.size()) < plan.num_chunks) ctx.ffn_.resize(static_cast<std::size_t>(plan.num_chunks));
    for (int c = 0; c < plan.num_chunks; ++c) {
      experts::reserve(ctx.ffn_[static_cast<std::size_t>(c)], plan.chunk_recv_rows(c), experts_.shape(),
                       config.compute);
    }
    if (config.has_shared_expert()) {
      experts::reserve(ctx.shared_ffn_, plan.num_tokens, shared_expert_.shape(), config.compute);
      grow(shared_rows_, plan.num_tokens * d);
    }
  };
  dispatcher_.plan(ctx.dispatch_, routing, local_error, reserve);
  clock.lap(Phase::route);

  shared_offsets_ = {0, num_tokens};
  stats.shared_expert_seconds = 0;
  const auto shared_forward = [&] {
    if (!config.has_shared_expert()) return;
    const auto start = Clock::now();
    experts::ffn_forward(shared_expert_, x, shared_offsets_, rows(shared_rows_, 0, num_tokens, d),
                         ctx.shared_ffn_, config.compute);
    stats.shared_expert_seconds = std::chrono::duration<double>(Clock::now() - start).count();
    clock.lap(Phase::experts);
  };
  const auto expert_forward = [&](const ExpertBatch& batch) {
    experts::ffn_forward(experts_, batch.input, batch.offsets, batch.output,
                         ctx.ffn_[static_cast<std::size_t>(batch.chunk)], config.compute);
  };
  // The router's loss terms ride on the statistics' allgather.
  std::copy(router.prob_sum.begin(), router.prob_sum.begin() + config.num_experts, loss_sums_.begin());
  loss_sums_.back() = router.logsumexp_sq_sum;
  dispatcher_.forward(ctx.dispatch_, x, y, expert_forward, clock, shared_forward, loss_sums_);
  if (config.has_shared_expert()) {
    for (std::int64_t i = 0; i < num_tokens * d; ++i) y[static_cast<std::size_t>(i)] += shared_rows_[static_cast<std::size_t>(i)];
    clock.lap(Phase::combine);
  }
  ctx.result_.stats = stats;  // reuses the vectors' storage after the first call
  set_losses(ctx);
  return ctx.result_;
}

// SPEC.md section 7; both losses are 0 for an empty group.
void MoeLayer::set_losses(ForwardContext& ctx) const {
  const MoeConfig& config = dispatcher_.config();
  const ForwardStats& stats = ctx.result_.stats;
  ForwardResult& result = ctx.result_;
  result.aux_loss = result.z_loss = 0;
  if (stats.total_tokens == 0) return;
  const double total = static_cast<double>(stats.total_tokens);
  double balance = 0;
  for (std::int64_t e = 0; e < config.num_experts; ++e) {
    const double f = static_cast<double>(stats.expert_counts[e]) / (total * static_cast<double>(config.top_k));
    balance += f * (loss_sums_[static_cast<std::size_t>(e)] / total);
  }
  result.aux_loss = config.aux_loss_coef * static_cast<double>(config.num_experts) * balance;
  result.z_loss = config.z_loss_coef * loss_sums_.back() / total;
}

void MoeLayer::backward(std::span<const float> x, std::span<const float> dy, std::span<float> dx,
                        ForwardContext& ctx, double grad_aux, double grad_z) {
  const MoeConfig& config = dispatcher_.config();
  const std::int64_t d = config.d_model;
  const DispatchPlan& plan = ctx.dispatch_.plan();
  const std::int64_t num_tokens = plan.num_tokens;
  const std::size_t expected = static_cast<std::size_t>(num_tokens * d);
  std::string local_error;
  if (x.size() != expected || dy.size() != expected || dx.size() != expected) {
    local_error = "backward: x, dy and dx must each have " + std::to_string(expected) +
                  " elements (the forward's " + std::to_string(num_tokens) +
                  " tokens), got " + std::to_string(x.size()) + ", " + std::to_string(dy.size()) +
                  " and " + std::to_string(dx.size());
  }
  const auto reserve = [&] {
    grow(d_weight_, num_tokens * config.top_k);
    grow(d_logits_, num_tokens * config.num_experts);
    if (config.has_shared_expert()) grow(shared_rows_, num_tokens * d);
  };
  dispatcher_.prepare_backward(ctx.dispatch_, dy, local_error, reserve);

  PhaseTimer clock(ctx.dispatch_.backward_phase_seconds(), "backward");
  shared_offsets_ = {0, num_tokens};
  const auto shared_backward = [&] {
    if (!config.has_shared_expert()) return;
    experts::ffn_backward(shared_expert_, x, shared_offsets_, ctx.shared_ffn_, dy,
                          rows(shared_rows_, 0, num_tokens, d), shared_expert_grads_);
    clock.lap(Phase::experts);
  };
  const auto expert_backward = [&](const ExpertBatch& batch) {
    experts::ffn_backward(experts_, batch.input, batch.offsets, ctx.ffn_[static_cast<std::size_t>(batch.chunk)],
                          batch.grad_output, batch.output, expert_grads_);
  };
  dispatcher_.backward(ctx.dispatch_, dy, dx, d_weight_, expert_backward, clock, shared_backward);
  if (config.has_shared_expert()) {
    for (std::int64_t i = 0; i < num_tokens * d; ++i) dx[static_cast<std::size_t>(i)] += shared_rows_[static_cast<std::size_t>(i)];
  }
  clock.lap(Phase::permute);

  const RouterLossGrad losses{ctx.result_.stats.expert_counts, ctx.result_.stats.total_tokens,
                              grad_aux, grad_z};
  route_backward(config, gate_weight_, x, ctx.router_, d_weight_, losses, d_logits_, dx,
                 gate_weight_grad_);
  clock.lap(Phase::route);
}

}  // namespace moe
