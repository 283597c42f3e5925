#include "apps/train_model.hpp"

#include <algorithm>
#include <cmath>
#include <map>

#include "experts/gemm.hpp"
#include "runtime/initialization.hpp"
#include "runtime/layer_tensors.hpp"

namespace moe::apps {
namespace {

std::size_t sz(std::int64_t n) { return static_cast<std::size_t>(n); }

void sum_and_scale(comm::Communicator& world, std::span<float> values, float scale) {
  if (world.size() > 1) world.allreduce(values, comm::ReduceOp::sum);
  if (scale != 1.0f) {
    for (float& v : values) v *= scale;
  }
}

}  // namespace

// One pre-norm block: its LayerNorm and either a MoE layer or the dense FFN.
struct TrainModel::Block {
  std::span<float> norm_weight, norm_bias, grad_norm_weight, grad_norm_bias;
  std::unique_ptr<MoeLayer> moe;
  ForwardContext moe_ctx;
  experts::ExpertShard ffn, ffn_grads;   // one "expert" of hidden k·h + h_s (dense baseline)
  experts::FfnActivations ffn_saved;
  std::vector<float> normed, out;        // LayerNorm output (block input) and block output
  LayerNormSaved norm_saved;
};

TrainModel::TrainModel(const ModelConfig& config, ParallelGroups& groups, comm::Communicator& world)
    : config_(config), groups_(groups), world_(world) {
  const MoeConfig& c = config.layer;
  const std::int64_t d = c.d_model, L = config.num_layers;
  // Flat layout: per block norm weight and bias, then the final norm, head weight, head bias.
  flat_values_.assign(sz(L * 2 * d + 2 * d + config.d_out * d + config.d_out), 0.0f);
  flat_grads_.assign(flat_values_.size(), 0.0f);
  std::size_t offset = 0;
  auto flat = [&](std::int64_t n) {
    const std::size_t at = offset;
    offset += sz(n);
    return at;
  };
  for (std::int64_t i = 0; i < L; ++i) {
    auto block = std::make_unique<Block>();
    const std::string prefix = "layers." + std::to_string(i) + ".";
    const std::size_t w = flat(d), b = flat(d);
    block->norm_weight = std::span(flat_values_).subspan(w, sz(d));
    block->norm_bias = std::span(flat_values_).subspan(b, sz(d));
    block->grad_norm_weight = std::span(flat_grads_).subspan(w, sz(d));
    block->grad_norm_bias = std::span(flat_grads_).subspan(b, sz(d));
    add_replicated(prefix + "norm.weight", {d}, w);
    add_replicated(prefix + "norm.bias", {d}, b);
    if (config.kind == BlockKind::moe) {
      MoeConfig labelled = c;
      labelled.label = prefix + "moe";
      block->moe = std::make_unique<MoeLayer>(labelled, *groups.ep);
      add_moe_parameters(prefix + "moe.", *block->moe);
    } else {
      const experts::ExpertShape shape{d, dense_hidden(c), c.activation};
      block->ffn = experts::ExpertShard(1, shape);
      block->ffn_grads = experts::ExpertShard(1, shape);
      for (std::string_view p : experts::expert_param_names(c.activation)) {
        params_.push_back({prefix + "ffn." + std::string(p), block->ffn.param_shape(p),
                           block->ffn.param(0, p), block->ffn_grads.param(0, p), false});
      }
    }
    blocks_.push_back(std::move(block));
  }
  final_norm_weight_ = params_.size();
  add_replicated("norm.weight", {d}, flat(d));
  final_norm_bias_ = params_.size();
  add_replicated("norm.bias", {d}, flat(d));
  head_weight_ = params_.size();
  add_replicated("head.weight", {config.d_out, d}, flat(config.d_out * d));
  head_bias_ = params_.size();
  add_replicated("head.bias", {config.d_out}, flat(config.d_out));
}

void TrainModel::add_moe_parameters(const std::string& prefix, MoeLayer& layer) {
  for (LayerTensor& t : layer_parameters(layer)) {
    params_.push_back({prefix + t.name, std::move(t.shape), t.value, t.grad, t.placement == Placement::expert});
  }
  for (LayerTensor& t : layer_buffers(layer)) buffers_.push_back({prefix + t.name, std::move(t.shape), t.value});
}

TrainModel::~TrainModel() = default;

void TrainModel::add_replicated(std::string name, std::vector<std::int64_t> shape,
                                std::size_t offset) {
  std::int64_t n = 1;
  for (std::int64_t s : shape) n *= s;
  params_.push_back({std::move(name), std::move(shape),
                     std::span(flat_values_).subspan(offset, sz(n)),
                     std::span(flat_grads_).subspan(offset, sz(n)), false});
}

void TrainModel::init(std::uint64_t seed) {
  // A bias has no fan-in of its own: nn.Linear gives it its weight's (the weight's second
  // dimension), so `X.bias` looks up `X.weight`, which every rank holding the bias also holds.
  std::map<std::string_view, std::int64_t> fan_in_of_weight;
  for (const Parameter& p : params_) {
    if (p.shape.size() == 2) fan_in_of_weight[p.name] = p.shape[1];
  }
  for (Parameter& p : params_) {
    if (p.name.ends_with("norm.weight")) {
      std::fill(p.value.begin(), p.value.end(), 1.0f);
    } else if (p.name.ends_with("norm.bias")) {
      std::fill(p.value.begin(), p.value.end(), 0.0f);
    } else {
      // nn.Linear: weight [out, in] and its bias uniform in ±1/sqrt(in).
      const std::int64_t fan_in =
          p.shape.size() == 2
              ? p.shape[1]
              : fan_in_of_weight.at(p.name.substr(0, p.name.size() - std::string_view("bias").size()) + "weight");
      fill_uniform(p.value, static_cast<float>(1.0 / std::sqrt(static_cast<double>(fan_in))), seed,
                   p.name);
    }
  }
  // The selection bias starts at zero, as in DeepSeek-V3.
  for (Buffer& b : buffers_) std::fill(b.value.begin(), b.value.end(), 0.0f);
  parameters_changed();
}

void TrainModel::parameters_changed() {
  for (auto& block : blocks_) {
    if (block->moe) block->moe->parameters_changed();
    else block->ffn.mark_changed();
  }
}

void TrainModel::update_selection_biases() {
  const MoeConfig& c = config_.layer;
  if (config_.kind != BlockKind::moe || c.bias_update_rate == 0) return;
  const std::size_t E = sz(c.num_experts);
  bias_counts_.resize(blocks_.size() * E);
  for (std::size_t i = 0; i < blocks_.size(); ++i) {
    const auto& counts = blocks_[i]->moe_ctx.result().stats.expert_counts;
    std::copy(counts.begin(), counts.end(), bias_counts_.begin() + static_cast<std::ptrdiff_t>(i * E));
  }
  // Each expert-parallel group counted its own tokens; the bias is shared by every replica.
  if (groups_.dp_size > 1) groups_.dp->allreduce(std::span<std::int64_t>(bias_counts_), comm::ReduceOp::sum);
  for (std::size_t i = 0; i < blocks_.size(); ++i) {
    bias_result_.stats.expert_counts.assign(bias_counts_.begin() + static_cast<std::ptrdiff_t>(i * E),
                                            bias_counts_.begin() + static_cast<std::ptrdiff_t>((i + 1) * E));
    blocks_[i]->moe->update_selection_bias(bias_result_);
  }
}

ForwardSummary TrainModel::forward(std::span<const float> x, std::span<const float> target,
                                   std::int64_t group_tokens) {
  const std::int64_t d = config_.layer.d_model, d_out = config_.d_out;
  tokens_ = static_cast<std::int64_t>(x.size()) / d;
  group_tokens_ = group_tokens;
  const std::size_t rows = sz(tokens_ * d);
  residual_.resize(blocks_.size() + 1);
  residual_[0].assign(x.begin(), x.end());
  ForwardSummary summary;
  for (std::size_t i = 0; i < blocks_.size(); ++i) {
    Block& b = *blocks_[i];
    b.normed.resize(rows);
    b.out.resize(rows);
    layer_norm_forward(residual_[i], d, b.norm_weight, b.norm_bias, b.normed, b.norm_saved);
    if (b.moe) {
      const ForwardResult& r = b.moe->forward(b.normed, b.out, b.moe_ctx);
      summary.aux_loss += r.aux_loss;
      summary.z_loss += r.z_loss;
      summary.assignments += r.stats.total_tokens * config_.layer.top_k;
      summary.dropped += r.stats.dropped_assignments;
      summary.load_max_over_mean += r.stats.load_max_over_mean / static_cast<double>(blocks_.size());
    } else {
      const std::int64_t offsets[2] = {0, tokens_};
      experts::ffn_forward(b.ffn, b.normed, offsets, b.out, b.ffn_saved, config_.layer.compute);
    }
    residual_[i + 1].resize(rows);
    for (std::size_t j = 0; j < rows; ++j) residual_[i + 1][j] = residual_[i][j] + b.out[j];
  }
  const Parameter& final_w = params_[final_norm_weight_];
  const Parameter& final_b = params_[final_norm_bias_];
  const Parameter& head_w = params_[head_weight_];
  const Parameter& head_b = params_[head_bias_];
  final_norm_out_.resize(rows);
  layer_norm_forward(residual_.back(), d, final_w.value, final_b.value, final_norm_out_,
                     final_norm_saved_);
  pred_.resize(sz(tokens_ * d_out));
  for (std::int64_t t = 0; t < tokens_; ++t) {
    std::copy(head_b.value.begin(), head_b.value.end(), pred_.begin() + t * d_out);
  }
  experts::gemm(experts::Op::none, experts::Op::transpose, tokens_, d_out, d, 1.0f,
                final_norm_out_, d, head_w.value, d, 1.0f, pred_, d_out);
  target_.assign(target.begin(), target.end());
  for (std::size_t j = 0; j < pred_.size(); ++j) {
    const double e = static_cast<double>(pred_[j]) - target_[j];
    summary.sum_squared_error += e * e;
  }
  return summary;
}

void TrainModel::backward() {
  const std::int64_t d = config_.layer.d_model, d_out = config_.d_out;
  const std::size_t rows = sz(tokens_ * d);
  std::fill(flat_grads_.begin(), flat_grads_.end(), 0.0f);
  Parameter& final_w = params_[final_norm_weight_];
  Parameter& final_b = params_[final_norm_bias_];
  Parameter& head_w = params_[head_weight_];
  Parameter& head_b = params_[head_bias_];

  // d(MSE of the group)/d(prediction); the group mean is taken over all its tokens.
  const float scale = 2.0f / static_cast<float>(group_tokens_ * d_out);
  std::vector<float>& grad_pred = scratch_;
  grad_pred.resize(pred_.size());
  for (std::size_t j = 0; j < pred_.size(); ++j) grad_pred[j] = scale * (pred_[j] - target_[j]);
  using experts::Op;
  experts::gemm(Op::transpose, Op::none, d_out, d, tokens_, 1.0f, grad_pred, d_out,
                final_norm_out_, d, 1.0f, head_w.grad, d);
  for (std::int64_t t = 0; t < tokens_; ++t) {
    for (std::int64_t o = 0; o < d_out; ++o) head_b.grad[sz(o)] += grad_pred[sz(t * d_out + o)];
  }
  grad_block_out_.resize(rows);  // gradient of the final LayerNorm's output
  experts::gemm(Op::none, Op::none, tokens_, d, d_out, 1.0f, grad_pred, d_out, head_w.value, d,
                0.0f, grad_block_out_, d);
  grad_residual_.resize(rows);
  layer_norm_backward(residual_.back(), d, final_w.value, final_norm_saved_, grad_block_out_,
                      grad_residual_, final_w.grad, final_b.grad);

  grad_block_in_.resize(rows);
  grad_norm_in_.resize(rows);
  for (std::size_t i = blocks_.size(); i-- > 0;) {
    Block& b = *blocks_[i];
    // h_{i+1} = h_i + block(norm(h_i)): the block's output gradient is the residual's.
    if (b.moe) {
      b.moe->zero_grad();
      b.moe->backward(b.normed, grad_residual_, grad_block_in_, b.moe_ctx);
    } else {
      b.ffn_grads.set_zero();
      const std::int64_t offsets[2] = {0, tokens_};
      experts::ffn_backward(b.ffn, b.normed, offsets, b.ffn_saved, grad_residual_,
                            grad_block_in_, b.ffn_grads);
    }
    layer_norm_backward(residual_[i], d, b.norm_weight, b.norm_saved, grad_block_in_, grad_norm_in_,
                        b.grad_norm_weight, b.grad_norm_bias);
    for (std::size_t j = 0; j < rows; ++j) grad_residual_[j] += grad_norm_in_[j];
  }
}

void TrainModel::reduce_gradients() {
  // Replicated parameters: sum over the expert-parallel group, mean over the replicas.
  const float replica_scale = 1.0f / static_cast<float>(groups_.dp_size);
  sum_and_scale(world_, flat_grads_, replica_scale);
  for (auto& block : blocks_) {
    if (block->moe) {
      moe::reduce_gradients(*block->moe, groups_, GradReduction::mean);
    } else {
      for (std::string_view p : experts::expert_param_names(config_.layer.activation)) {
        sum_and_scale(world_, block->ffn_grads.param(0, p), replica_scale);
      }
    }
  }
}

std::span<const float> TrainModel::block_input(std::int64_t layer) const {
  return blocks_.at(sz(layer))->normed;
}

std::span<const float> TrainModel::block_output(std::int64_t layer) const {
  return blocks_.at(sz(layer))->out;
}

const MoeLayer* TrainModel::moe_layer(std::int64_t layer) const {
  return blocks_.at(sz(layer))->moe.get();
}

const ForwardContext& TrainModel::moe_context(std::int64_t layer) const {
  return blocks_.at(sz(layer))->moe_ctx;
}

}  // namespace moe::apps
