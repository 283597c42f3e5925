#include "experts/expert_shard.hpp"

#include <algorithm>
#include <mutex>
#include <stdexcept>
#include <string>

namespace moe::experts {
namespace {

std::size_t to_size(std::int64_t n) { return static_cast<std::size_t>(n); }

// Local expert e's slice of a [num_experts, per_expert] array; empty when the array is (a
// parameter this activation does not have).
template <typename T>
std::span<T> slice(std::span<T> all, std::int64_t num_experts, std::int64_t e) {
  if (e < 0 || e >= num_experts) {
    throw std::out_of_range("ExpertShard: local expert " + std::to_string(e) +
                            " out of range [0, " + std::to_string(num_experts) + ")");
  }
  const std::size_t per_expert = all.size() / to_size(num_experts);
  return all.subspan(to_size(e) * per_expert, per_expert);
}

// One lookup for the const and non-const overloads of ExpertShard::param.
template <typename Shard>
auto param_by_name(Shard& shard, std::int64_t e, std::string_view name) {
  shard.param_shape(name);  // rejects names this activation does not have
  if (name == "w1.weight") return shard.w1(e);
  if (name == "w1.bias") return shard.b1(e);
  if (name == "w2.weight") return shard.w2(e);
  if (name == "w2.bias") return shard.b2(e);
  return shard.w3(e);
}

}  // namespace

void ExpertShard::refresh_bf16() const {
  // One mutex for all shards: a refresh that finds the copies current is a compare, and one that
  // converts runs once per weight update, so contention is not worth a mutex per shard (which
  // would also make the shard immovable).
  static std::mutex guard;
  std::lock_guard lock(guard);
  if (bf16_.current && bf16_.version == version_) return;
  for (auto [from, to] : {std::pair{&w1_, &bf16_.w1}, std::pair{&w2_, &bf16_.w2},
                          std::pair{&w3_, &bf16_.w3}}) {
    to->resize(from->size());
    convert(std::span<const float>(*from), std::span<bf16>(*to));
  }
  bf16_.version = version_;
  bf16_.current = true;
}

std::span<const bf16> ExpertShard::w1_bf16(std::int64_t e) const {
  return slice(std::span<const bf16>(bf16_.w1), num_experts_, e);
}
std::span<const bf16> ExpertShard::w2_bf16(std::int64_t e) const {
  return slice(std::span<const bf16>(bf16_.w2), num_experts_, e);
}
std::span<const bf16> ExpertShard::w3_bf16(std::int64_t e) const {
  return slice(std::span<const bf16>(bf16_.w3), num_experts_, e);
}

std::vector<std::string_view> expert_param_names(Activation activation) {
  if (is_gated(activation)) return {"w1.weight", "w2.weight", "w3.weight"};
  return {"w1.weight", "w1.bias", "w2.weight", "w2.bias"};
}

ExpertShard::ExpertShard(std::int64_t num_local_experts, ExpertShape shape)
    : num_experts_(num_local_experts), shape_(shape) {
  if (num_local_experts < 0 || shape.d_model < 0 || shape.d_hidden < 0) {
    throw std::invalid_argument("ExpertShard: negative size (experts=" +
                                std::to_string(num_local_experts) +
                                ", d_model=" + std::to_string(shape.d_model) +
                                ", d_hidden=" + std::to_string(shape.d_hidden) + ")");
  }
  const std::size_t n = to_size(num_local_experts);
  const std::size_t d = to_size(shape.d_model);
  const std::size_t h = to_size(shape.d_hidden);
  w1_.assign(n * h * d, 0.0f);
  w2_.assign(n * d * h, 0.0f);
  if (is_gated(shape.activation)) {
    w3_.assign(n * h * d, 0.0f);
  } else {
    b1_.assign(n * h, 0.0f);
    b2_.assign(n * d, 0.0f);
  }
}

std::span<float> ExpertShard::w1(std::int64_t e) {
  ++version_;
  return slice(std::span(w1_), num_experts_, e);
}
std::span<float> ExpertShard::b1(std::int64_t e) {
  ++version_;
  return slice(std::span(b1_), num_experts_, e);
}
std::span<float> ExpertShard::w2(std::int64_t e) {
  ++version_;
  return slice(std::span(w2_), num_experts_, e);
}
std::span<float> ExpertShard::b2(std::int64_t e) {
  ++version_;
  return slice(std::span(b2_), num_experts_, e);
}
std::span<float> ExpertShard::w3(std::int64_t e) {
  ++version_;
  return slice(std::span(w3_), num_experts_, e);
}
std::span<const float> ExpertShard::w1(std::int64_t e) const {
  return slice(std::span(w1_), num_experts_, e);
}
std::span<const float> ExpertShard::b1(std::int64_t e) const {
  return slice(std::span(b1_), num_experts_, e);
}
std::span<const float> ExpertShard::w2(std::int64_t e) const {
  return slice(std::span(w2_), num_experts_, e);
}
std::span<const float> ExpertShard::b2(std::int64_t e) const {
  return slice(std::span(b2_), num_experts_, e);
}
std::span<const float> ExpertShard::w3(std::int64_t e) const {
  return slice(std::span(w3_), num_experts_, e);
}

std::span<float> ExpertShard::param(std::int64_t e, std::string_view name) {
  ++version_;
  return param_by_name(*this, e, name);
}

std::span<const float> ExpertShard::param(std::int64_t e, std::string_view name) const {
  return param_by_name(*this, e, name);
}

std::vector<std::int64_t> ExpertShard::param_shape(std::string_view name) const {
  const auto names = expert_param_names(shape_.activation);
  if (std::find(names.begin(), names.end(), name) == names.end()) {
    throw std::invalid_argument("ExpertShard: no parameter \"" + std::string(name) +
                                "\" for activation " +
                                std::string(to_string(shape_.activation)));
  }
  const std::int64_t d = shape_.d_model;
  const std::int64_t h = shape_.d_hidden;
  if (name == "w1.weight" || name == "w3.weight") return {h, d};
  if (name == "w1.bias") return {h};
  if (name == "w2.weight") return {d, h};
  return {d};  // w2.bias
}

void ExpertShard::set_zero() {
  ++version_;
  for (auto* v : {&w1_, &b1_, &w2_, &b2_, &w3_}) std::fill(v->begin(), v->end(), 0.0f);
}

}  // namespace moe::experts
