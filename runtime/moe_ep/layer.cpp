#include "runtime/moe_ep/layer.hpp"

#include "runtime/initialization.hpp"
#include "runtime/moe_layer.hpp"

namespace moe_ep {

ForwardContext::ForwardContext() : impl_(std::make_unique<moe::ForwardContext>()) {}
ForwardContext::~ForwardContext() = default;
ForwardContext::ForwardContext(ForwardContext&&) noexcept = default;
ForwardContext& ForwardContext::operator=(ForwardContext&&) noexcept = default;

double ForwardContext::aux_loss() const { return impl_->result().aux_loss; }
double ForwardContext::z_loss() const { return impl_->result().z_loss; }
const ForwardStats& ForwardContext::stats() const { return impl_->result().stats; }
std::int64_t ForwardContext::num_tokens() const { return impl_->num_tokens(); }
std::span<const std::int32_t> ForwardContext::selected_experts() const { return impl_->selected_experts(); }
std::span<const float> ForwardContext::selected_weights() const { return impl_->selected_weights(); }
bool ForwardContext::kept(std::int64_t t, std::int64_t j) const { return impl_->kept(t, j); }

Layer::Layer(const Config& config, moe::comm::Communicator& ep_comm)
    : impl_(std::make_unique<moe::MoeLayer>(config, ep_comm)) {}
Layer::~Layer() = default;
Layer::Layer(Layer&&) noexcept = default;
Layer& Layer::operator=(Layer&&) noexcept = default;

const Config& Layer::config() const { return impl_->config(); }
std::int64_t Layer::local_experts() const { return impl_->local_experts(); }
std::int64_t Layer::first_expert() const { return impl_->first_expert(); }
std::vector<LayerTensor> Layer::parameters() { return moe::layer_parameters(*impl_); }
std::vector<LayerTensor> Layer::buffers() { return moe::layer_buffers(*impl_); }
void Layer::init_parameters(std::uint64_t seed) { moe::init_parameters(*impl_, seed); }

void Layer::parameters_changed() { impl_->parameters_changed(); }

void Layer::forward(std::span<const float> x, std::span<float> y, ForwardContext& ctx) {
  impl_->forward(x, y, *ctx.impl_);
}

const ForwardStats& Layer::infer(std::span<const float> x, std::span<float> y) {
  forward(x, y, inference_);
  return inference_.stats();
}

void Layer::backward(std::span<const float> x, std::span<const float> dy, std::span<float> dx,
                     ForwardContext& ctx, double grad_aux, double grad_z) {
  impl_->backward(x, dy, dx, *ctx.impl_, grad_aux, grad_z);
}

void Layer::zero_grad() { impl_->zero_grad(); }

void Layer::reduce_gradients(moe::ParallelGroups& groups, moe::GradReduction reduction) {
  moe::reduce_gradients(*impl_, groups, reduction);
}

void Layer::update_selection_bias(const ForwardContext& ctx, moe::ParallelGroups& groups) {
  if (config().gate != moe::GateKind::sigmoid || config().bias_update_rate == 0) return;
  moe::ForwardResult counts;
  counts.stats.expert_counts = ctx.stats().expert_counts;
  if (groups.dp_size > 1) groups.dp->allreduce(std::span<std::int64_t>(counts.stats.expert_counts), moe::comm::ReduceOp::sum);
  impl_->update_selection_bias(counts);
}

}  // namespace moe_ep
