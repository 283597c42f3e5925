#include "tests/support/case_bridge.hpp"

#include <cmath>

#include "experts/activation.hpp"
#include "experts/expert_shard.hpp"
#include "runtime/error.hpp"
#include "runtime/layer_case.hpp"

namespace moe::test {
namespace {

// FNV-1a: a seed per case name that is the same with every standard library.
std::uint64_t seed_of(const std::string& name) {
  std::uint64_t h = 1469598103934665603ull;
  for (unsigned char c : name) h = (h ^ c) * 1099511628211ull;
  return h;
}

Tensor to_tensor(std::vector<std::int64_t> shape, const std::vector<double>& values) {
  std::vector<float> narrow(values.begin(), values.end());
  return Tensor::from_f32(std::move(shape), narrow);
}

}  // namespace

MoeConfig to_config(const ref::LayerConfig& config) {
  MoeConfig out;
  out.num_experts = config.num_experts;
  out.d_model = config.d_model;
  out.d_hidden = config.d_hidden;
  out.top_k = config.top_k;
  out.capacity_factor = config.capacity_factor;
  out.min_capacity = config.min_capacity;
  out.drop_policy = parse_drop_policy(config.drop_policy).value();
  out.activation = experts::parse_activation(config.activation).value();
  out.normalize_topk = config.normalize_topk;
  out.aux_loss_coef = config.aux_loss_coef;
  out.z_loss_coef = config.z_loss_coef;
  out.gate = parse_gate_kind(config.gate).value();
  out.n_group = config.n_group;
  out.topk_group = config.topk_group;
  out.routed_scaling_factor = config.routed_scaling_factor;
  out.capacity_scope = parse_capacity_scope(config.capacity_scope).value();
  out.bias_update_rate = config.bias_update_rate;
  out.d_shared_hidden = config.d_shared_hidden;
  return out;
}

namespace {

void put_expert(std::map<std::string, Tensor>& tensors, const std::string& prefix,
                const ref::ExpertParams& p, std::int64_t d, std::int64_t h, bool gated) {
  tensors[prefix + "w1.weight"] = to_tensor({h, d}, p.w1);
  tensors[prefix + "w2.weight"] = to_tensor({d, h}, p.w2);
  if (gated) {
    tensors[prefix + "w3.weight"] = to_tensor({h, d}, p.w3);
  } else {
    tensors[prefix + "w1.bias"] = to_tensor({h}, p.b1);
    tensors[prefix + "w2.bias"] = to_tensor({d}, p.b2);
  }
}

std::vector<double> widen(std::span<const float> v) { return {v.begin(), v.end()}; }

ref::ExpertParams read_expert(const std::map<std::string, Tensor>& t, const std::string& prefix,
                              experts::Activation activation) {
  ref::ExpertParams p;
  for (std::string_view name : experts::expert_param_names(activation)) {
    expert_param(p, name) = widen(t.at(prefix + std::string(name)).f32());
  }
  return p;
}

}  // namespace

ref::LayerCase from_case_file(const LayerCase& lc) {
  ref::LayerCase c;
  const MoeConfig& m = lc.config;
  c.config.num_experts = m.num_experts;
  c.config.d_model = m.d_model;
  c.config.d_hidden = m.d_hidden;
  c.config.top_k = m.top_k;
  c.config.capacity_factor = m.capacity_factor;
  c.config.min_capacity = m.min_capacity;
  c.config.drop_policy = std::string(to_string(m.drop_policy));
  c.config.activation = std::string(experts::to_string(m.activation));
  c.config.normalize_topk = m.normalize_topk;
  c.config.aux_loss_coef = m.aux_loss_coef;
  c.config.z_loss_coef = m.z_loss_coef;
  c.config.gate = std::string(to_string(m.gate));
  c.config.n_group = m.n_group;
  c.config.topk_group = m.topk_group;
  c.config.routed_scaling_factor = m.routed_scaling_factor;
  c.config.capacity_scope = std::string(to_string(m.capacity_scope));
  c.config.bias_update_rate = m.bias_update_rate;
  c.config.d_shared_hidden = m.d_shared_hidden;
  c.tokens_per_rank = lc.tokens_per_rank;
  const auto& t = lc.file.tensors;
  c.input = widen(t.at("input").f32());
  if (lc.has_grad_output()) c.grad_output = widen(t.at("grad_output").f32());
  c.params.gate = widen(t.at("gate.weight").f32());
  if (auto bias = t.find(std::string(kSelectionBias)); bias != t.end()) c.params.score_bias = widen(bias->second.f32());
  for (std::int64_t e = 0; e < m.num_experts; ++e) {
    c.params.experts.push_back(read_expert(t, "experts." + std::to_string(e) + ".", m.activation));
  }
  if (m.has_shared_expert()) c.params.shared_expert = read_expert(t, std::string(kSharedPrefix), m.activation);
  return c;
}

SafetensorsFile to_case_file(const ref::LayerCase& c) {
  const auto& cfg = c.config;
  const std::int64_t d = cfg.d_model, h = cfg.d_hidden, e_count = cfg.num_experts;
  const std::int64_t total = static_cast<std::int64_t>(c.input.size()) / d;
  std::map<std::string, Tensor> tensors;
  tensors["gate.weight"] = to_tensor({e_count, d}, c.params.gate);
  tensors["input"] = to_tensor({total, d}, c.input);
  // An empty group cannot tell "no grad_output" from an empty one; it always carries [0, d].
  if (c.grad_output.size() == c.input.size()) {
    tensors["grad_output"] = to_tensor({total, d}, c.grad_output);
  }
  const bool gated = cfg.activation == "swiglu";
  for (std::int64_t e = 0; e < e_count; ++e) {
    put_expert(tensors, "experts." + std::to_string(e) + ".", c.params.experts[static_cast<std::size_t>(e)], d, h, gated);
  }
  if (c.params.shared_expert) {
    put_expert(tensors, std::string(kSharedPrefix), *c.params.shared_expert, d, cfg.d_shared_hidden, gated);
  }
  if (!c.params.score_bias.empty()) tensors[std::string(kSelectionBias)] = to_tensor({e_count}, c.params.score_bias);
  return make_layer_case_file(to_config(cfg), c.tokens_per_rank, std::move(tensors));
}

std::vector<double>& expert_param(ref::ExpertParams& params, std::string_view name) {
  if (name == "w1.weight") return params.w1;
  if (name == "w1.bias") return params.b1;
  if (name == "w2.weight") return params.w2;
  if (name == "w2.bias") return params.b2;
  if (name == "w3.weight") return params.w3;
  throw std::invalid_argument("no expert parameter named " + std::string(name));
}

const std::vector<double>& expert_param(const ref::ExpertParams& params, std::string_view name) {
  return expert_param(const_cast<ref::ExpertParams&>(params), name);
}

void ErrorSums::add(std::span<const float> actual, std::span<const double> expected) {
  if (actual.size() != expected.size()) {
    throw std::invalid_argument("ErrorSums::add: sizes differ");
  }
  for (std::size_t i = 0; i < actual.size(); ++i) add(static_cast<double>(actual[i]), expected[i]);
}

void ErrorSums::add(double actual, double expected) {
  diff_sq += (actual - expected) * (actual - expected);
  ref_sq += expected * expected;
}

double ErrorSums::relative() const {
  return ref_sq > 0 ? std::sqrt(diff_sq / ref_sq) : std::sqrt(diff_sq);
}

std::vector<NamedCase> bf16_cases(int ranks) {
  std::vector<NamedCase> cases;
  const auto wide = [ranks](const char* activation) {
    ref::CaseSpec spec;
    spec.config.num_experts = 4 * ranks;
    spec.config.d_model = 64;
    spec.config.d_hidden = 96;
    spec.config.activation = activation;
    spec.config.capacity_factor = 1.0;
    for (int r = 0; r < ranks; ++r) spec.tokens_per_rank.push_back(r % 2 ? 97 : 160);
    spec.seed = 7;
    return spec;
  };
  for (const char* act : {"gelu", "gelu_tanh", "relu", "silu", "swiglu"}) {
    cases.push_back({std::string("wide_") + act, wide(act)});
  }
  return cases;
}

std::vector<NamedCase> standard_cases(int ranks) {
  // Uneven token counts, cycling so every rank count has variety; rank 1 of the "empty" pattern
  // holds no tokens.
  auto tokens = [ranks](std::vector<std::int64_t> pattern) {
    std::vector<std::int64_t> out;
    for (int r = 0; r < ranks; ++r) out.push_back(pattern[static_cast<std::size_t>(r) % pattern.size()]);
    return out;
  };
  const auto uneven = tokens({37, 23, 52, 9});
  const auto with_empty = ranks > 1 ? tokens({29, 0, 41, 0}) : std::vector<std::int64_t>{0};

  auto make = [&](std::string name, auto&& tweak, std::vector<std::int64_t> tpr = {}) {
    ref::CaseSpec spec;
    spec.config.num_experts = 8;
    spec.config.d_model = 12;
    spec.config.d_hidden = 20;
    spec.tokens_per_rank = tpr.empty() ? uneven : tpr;
    spec.seed = seed_of(name);
    tweak(spec);
    return NamedCase{std::move(name), std::move(spec)};
  };
  auto keep = [](ref::CaseSpec&) {};

  std::vector<NamedCase> cases;
  cases.push_back(make("default", keep));
  cases.push_back(make("empty_rank", keep, with_empty));
  cases.push_back(make("hot_expert", [](auto& s) { s.hot_expert = true; }));
  cases.push_back(make("top1", [](auto& s) { s.config.top_k = 1; }));
  cases.push_back(make("top_all", [](auto& s) { s.config.top_k = s.config.num_experts; }));
  cases.push_back(make("experts_eq_ranks", [ranks](auto& s) {
    s.config.num_experts = ranks;
    s.config.top_k = std::min<std::int64_t>(2, ranks);
  }));
  cases.push_back(make("experts64", [](auto& s) {
    s.config.num_experts = 64;
    s.config.d_model = 16;
    s.config.d_hidden = 8;
  }, tokens({70, 45, 90, 33})));
  cases.push_back(make("dropless", [](auto& s) {
    s.config.capacity_factor = 0;
    s.hot_expert = true;
  }));
  cases.push_back(make("tight_capacity", [](auto& s) {
    s.config.capacity_factor = 0.5;
    s.config.min_capacity = 1;
  }));
  cases.push_back(make("score_policy", [](auto& s) {
    s.config.drop_policy = "score";
    s.config.capacity_factor = 0.5;
    s.config.min_capacity = 1;
    s.hot_expert = true;
  }));
  cases.push_back(make("normalize_topk", [](auto& s) {
    s.config.normalize_topk = true;
    s.config.capacity_factor = 0.75;
  }));
  cases.push_back(make("normalize_top1", [](auto& s) {
    s.config.normalize_topk = true;
    s.config.top_k = 1;
  }));
  cases.push_back(make("losses", [](auto& s) {
    s.config.aux_loss_coef = 0.1;
    s.config.z_loss_coef = 0.01;
  }));
  for (const char* act : {"gelu_tanh", "relu", "silu", "swiglu"}) {
    cases.push_back(make(std::string("act_") + act, [act](auto& s) { s.config.activation = act; }));
  }
  cases.push_back(make("odd_dims", [](auto& s) {
    s.config.d_model = 13;
    s.config.d_hidden = 7;
    s.config.activation = "swiglu";
    s.config.drop_policy = "score";
  }));

  // SPEC version 2: each new key alone, then all together.
  cases.push_back(make("sigmoid_bias", [](auto& s) {
    s.config.gate = "sigmoid";
    s.config.bias_update_rate = 0.01;
    s.config.capacity_factor = 0.75;
    s.with_score_bias = true;
  }));
  cases.push_back(make("groups", [](auto& s) {
    s.config.n_group = 4;
    s.config.topk_group = 2;
  }));
  cases.push_back(make("scaled_normalized", [](auto& s) {
    s.config.routed_scaling_factor = 2.5;
    s.config.normalize_topk = true;
  }));
  cases.push_back(make("shared_expert", [](auto& s) { s.config.d_shared_hidden = 16; }));
  cases.push_back(make("shared_swiglu_dropping", [](auto& s) {
    s.config.d_shared_hidden = 12;
    s.config.activation = "swiglu";
    s.config.capacity_factor = 0.5;
    s.config.min_capacity = 1;
    s.hot_expert = true;
  }, with_empty));
  cases.push_back(make("global_position", [](auto& s) {
    s.config.capacity_scope = "global";
    s.config.capacity_factor = 0.5;
    s.config.min_capacity = 1;
    s.hot_expert = true;
  }));
  cases.push_back(make("global_score", [](auto& s) {
    s.config.capacity_scope = "global";
    s.config.drop_policy = "score";
    s.config.capacity_factor = 0.75;
    s.config.min_capacity = 1;
  }, with_empty));
  // Placement of SPEC.md section 1: E not divisible by P (5 on 2 or 4 ranks), and more ranks than
  // experts (3 experts: on 4 ranks one owns none).
  cases.push_back(make("experts5", [](auto& s) {
    s.config.num_experts = 5;
    s.config.top_k = 2;
  }));
  cases.push_back(make("experts3", [](auto& s) {
    s.config.num_experts = 3;
    s.config.top_k = 2;
    s.config.capacity_factor = 0.75;
  }));
  cases.push_back(make("deepseek_v3", [](auto& s) {
    s.config.gate = "sigmoid";
    s.config.num_experts = 16;
    s.config.n_group = 4;
    s.config.topk_group = 2;
    s.config.top_k = 4;
    s.config.normalize_topk = true;
    s.config.routed_scaling_factor = 2.5;
    s.config.activation = "swiglu";
    s.config.d_shared_hidden = 24;
    s.config.capacity_scope = "global";
    s.config.bias_update_rate = 0.001;
    s.config.aux_loss_coef = 0.001;
    s.with_score_bias = true;
  }, tokens({40, 17, 63, 0})));
  return cases;
}

}  // namespace moe::test
