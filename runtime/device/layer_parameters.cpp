#include "runtime/device/layer_parameters.hpp"

#include <algorithm>
#include <string>

namespace moe::device {

LayerParameters zero_parameters(const MoeConfig& config, int rank, int ep_size) {
  LayerParameters p;
  p.gate_weight.assign(static_cast<std::size_t>(config.num_experts * config.d_model), 0.0f);
  p.selection_bias.assign(static_cast<std::size_t>(config.num_experts), 0.0f);
  p.experts = experts::ExpertShard(num_experts_of(rank, config.num_experts, ep_size),
                                   {config.d_model, config.d_hidden, config.activation});
  p.shared_expert = experts::ExpertShard(config.has_shared_expert() ? 1 : 0,
                                         {config.d_model, config.d_shared_hidden, config.activation});
  return p;
}

LayerParameters case_parameters(const LayerCase& layer_case, int rank, int ep_size) {
  const MoeConfig& config = layer_case.config;
  const auto& tensors = layer_case.file.tensors;
  LayerParameters p = zero_parameters(config, rank, ep_size);
  const auto copy = [&](const std::string& name, std::span<float> to) {
    const auto values = tensors.at(name).f32();
    std::copy(values.begin(), values.end(), to.begin());
  };
  copy("gate.weight", p.gate_weight);
  if (auto it = tensors.find(std::string(kSelectionBias)); it != tensors.end()) {
    std::copy(it->second.f32().begin(), it->second.f32().end(), p.selection_bias.begin());
  }
  const std::int64_t first = first_expert_of(rank, config.num_experts, ep_size);
  for (auto name : experts::expert_param_names(config.activation)) {
    for (std::int64_t e = 0; e < p.experts.num_experts(); ++e) {
      copy("experts." + std::to_string(first + e) + "." + std::string(name), p.experts.param(e, name));
    }
    if (p.shared_expert.num_experts() == 1) {
      copy(std::string(kSharedPrefix) + std::string(name), p.shared_expert.param(0, name));
    }
  }
  return p;
}

}  // namespace moe::device
