#include "runtime/moe_ep/dispatcher.hpp"

#include <algorithm>

#include "runtime/dispatcher.hpp"
#include "runtime/local_failure.hpp"

namespace moe_ep {
namespace {

// The dispatcher's own options: d_hidden belongs to the caller's experts.
Config dispatcher_config(Config config) {
  config.d_hidden = std::max<std::int64_t>(config.d_hidden, 1);
  return config;
}

}  // namespace

DispatchContext::DispatchContext() : impl_(std::make_unique<moe::DispatchContext>()) {}
DispatchContext::~DispatchContext() = default;
DispatchContext::DispatchContext(DispatchContext&&) noexcept = default;
DispatchContext& DispatchContext::operator=(DispatchContext&&) noexcept = default;

std::int64_t DispatchContext::num_tokens() const { return impl_->num_tokens(); }
bool DispatchContext::kept(std::int64_t t, std::int64_t j) const { return impl_->kept(t, j); }
std::int64_t DispatchContext::num_expert_rows() const { return impl_->num_expert_rows(); }
std::span<const std::int64_t> DispatchContext::expert_offsets() const { return impl_->expert_offsets(); }
std::span<const float> DispatchContext::expert_rows() const { return impl_->expert_rows(); }
const ForwardStats& DispatchContext::stats() const { return impl_->stats(); }

Dispatcher::Dispatcher(const Config& config, moe::comm::Communicator& ep_comm)
    : impl_(std::make_unique<moe::Dispatcher>(dispatcher_config(config), ep_comm)) {}
Dispatcher::~Dispatcher() = default;
Dispatcher::Dispatcher(Dispatcher&&) noexcept = default;
Dispatcher& Dispatcher::operator=(Dispatcher&&) noexcept = default;

const Config& Dispatcher::config() const { return impl_->config(); }
std::int64_t Dispatcher::local_experts() const { return impl_->local_experts(); }
std::int64_t Dispatcher::first_expert() const { return impl_->first_expert(); }

void Dispatcher::plan(DispatchContext& ctx, const Routing& routing) { impl_->plan(*ctx.impl_, routing); }

std::span<const float> Dispatcher::dispatch(DispatchContext& ctx, std::span<const float> x) {
  return impl_->dispatch(*ctx.impl_, x);
}

void Dispatcher::combine(DispatchContext& ctx, std::span<const float> expert_output, std::span<float> y) {
  impl_->combine(*ctx.impl_, expert_output, y);
}

std::span<const float> Dispatcher::dispatch_backward(DispatchContext& ctx, std::span<const float> dy) {
  return impl_->dispatch_backward(*ctx.impl_, dy);
}

void Dispatcher::combine_backward(DispatchContext& ctx, std::span<const float> grad_rows,
                                  std::span<float> dx, std::span<float> d_weight) {
  impl_->combine_backward(*ctx.impl_, grad_rows, dx, d_weight);
}

void Dispatcher::forward(DispatchContext& ctx, std::span<const float> x, std::span<float> y,
                         ExpertFunction experts) {
  const std::int64_t tokens = ctx.num_tokens(), d = config().d_model;
  std::string problem = moe::size_problem("forward", "x", x, tokens, d);
  if (problem.empty()) problem = moe::size_problem("forward", "y", y, tokens, d);
  impl_->agree("forward: agree on inputs", problem);
  moe::PhaseTimer timer(ctx.impl_->stats().phase_seconds, "forward");
  impl_->forward(*ctx.impl_, x, y, experts, timer);
}

void Dispatcher::backward(DispatchContext& ctx, std::span<const float> dy, std::span<float> dx,
                          std::span<float> d_weight, ExpertFunction experts) {
  const std::int64_t tokens = ctx.num_tokens();
  std::string problem = moe::size_problem("backward", "dx", dx, tokens, config().d_model);
  if (problem.empty()) problem = moe::size_problem("backward", "d_weight", d_weight, tokens, config().top_k);
  impl_->prepare_backward(*ctx.impl_, dy, problem);
  moe::PhaseTimer timer(ctx.impl_->backward_phase_seconds(), "backward");
  impl_->backward(*ctx.impl_, dy, dx, d_weight, experts, timer);
}

}  // namespace moe_ep
