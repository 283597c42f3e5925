#include "runtime/initialization.hpp"

#include <algorithm>
#include <cmath>
#include <numbers>
#include <string>

#include "runtime/moe_layer.hpp"

namespace moe {
namespace {

std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

std::uint64_t stream_key(std::uint64_t seed, std::string_view name) {
  std::uint64_t h = 1469598103934665603ull;  // FNV-1a of the name
  for (unsigned char c : name) h = (h ^ c) * 1099511628211ull;
  return splitmix64(seed ^ h);
}

// A double in [0, 1) from the top 53 bits.
double unit(std::uint64_t key, std::uint64_t i) {
  return static_cast<double>(splitmix64(key + i) >> 11) * 0x1.0p-53;
}

}  // namespace

void fill_uniform(std::span<float> values, float bound, std::uint64_t seed, std::string_view name) {
  const std::uint64_t key = stream_key(seed, name);
  for (std::size_t i = 0; i < values.size(); ++i) {
    values[i] = static_cast<float>((2.0 * unit(key, i) - 1.0) * static_cast<double>(bound));
  }
}

void fill_normal(std::span<float> values, std::uint64_t seed, std::string_view name) {
  const std::uint64_t key = stream_key(seed, name);
  for (std::size_t i = 0; i < values.size(); ++i) {
    const double u1 = 1.0 - unit(key, 2 * i);  // (0, 1]: log is finite
    const double u2 = unit(key, 2 * i + 1);
    values[i] = static_cast<float>(std::sqrt(-2.0 * std::log(u1)) *
                                   std::cos(2.0 * std::numbers::pi * u2));
  }
}

namespace {

// nn.Linear on every parameter of the experts of `shard`, named `prefix(e)` + the SPEC's name:
// w2 maps the hidden layer to d; every other parameter (w1, w3 and w1's bias) reads d.
template <class Prefix>
void init_experts(experts::ExpertShard& shard, std::uint64_t seed, Prefix&& prefix) {
  const experts::ExpertShape& shape = shard.shape();
  for (std::int64_t e = 0; e < shard.num_experts(); ++e) {
    const std::string name = prefix(e);
    for (std::string_view param : experts::expert_param_names(shape.activation)) {
      const std::int64_t fan_in = param.starts_with("w2") ? shape.d_hidden : shape.d_model;
      fill_uniform(shard.param(e, param), static_cast<float>(1.0 / std::sqrt(static_cast<double>(fan_in))),
                   seed, name + std::string(param));
    }
  }
}

}  // namespace

void init_parameters(MoeLayer& layer, std::uint64_t seed) {
  const MoeConfig& c = layer.config();
  fill_uniform(layer.gate_weight(), static_cast<float>(1.0 / std::sqrt(static_cast<double>(c.d_model))),
               seed, "gate.weight");
  init_experts(layer.experts(), seed,
               [&](std::int64_t e) { return "experts." + std::to_string(layer.first_expert() + e) + "."; });
  init_experts(layer.shared_expert(), seed, [](std::int64_t) { return std::string("shared_expert."); });
  // The selection bias is a buffer that starts at zero (DeepSeek-V3).
  std::fill(layer.selection_bias().begin(), layer.selection_bias().end(), 0.0f);
}

}  // namespace moe
