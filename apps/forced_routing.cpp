#include "apps/forced_routing.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <sstream>

#include "apps/mpi_program.hpp"
#include "runtime/moe_layer.hpp"

namespace moe::apps {

namespace {

[[noreturn]] void bad_routing(const std::string& text, const std::string& why) {
  throw UsageError("--routing '" + text + "': " + why +
                   " (expected learned, balanced, zipf:S or hot:E,P)");
}

double parse_number(const std::string& field, const std::string& whole) {
  std::size_t used = 0;
  double value = 0;
  try {
    value = std::stod(field, &used);
  } catch (const std::exception&) {
    bad_routing(whole, "'" + field + "' is not a number");
  }
  if (used != field.size() || !std::isfinite(value)) bad_routing(whole, "'" + field + "' is not a finite number");
  return value;
}

}  // namespace

RoutingSpec parse_routing(const std::string& text, std::int64_t num_experts, std::int64_t top_k,
                          std::int64_t d_model) {
  RoutingSpec spec;
  spec.text = text;
  if (text == "learned") return spec;
  if (text == "balanced") {
    spec.kind = RoutingSpec::Kind::balanced;
  } else if (text.rfind("zipf:", 0) == 0) {
    spec.kind = RoutingSpec::Kind::zipf;
    spec.zipf_s = parse_number(text.substr(5), text);
    if (spec.zipf_s < 0) bad_routing(text, "S must be >= 0");
  } else if (text.rfind("hot:", 0) == 0) {
    spec.kind = RoutingSpec::Kind::hot;
    const std::string rest = text.substr(4);
    const auto comma = rest.find(',');
    if (comma == std::string::npos) bad_routing(text, "hot needs an expert and a share, e.g. hot:0,0.5");
    const double expert = parse_number(rest.substr(0, comma), text);
    spec.hot_share = parse_number(rest.substr(comma + 1), text);
    if (expert != std::floor(expert) || expert < 0 || expert >= static_cast<double>(num_experts)) {
      bad_routing(text, "the hot expert must be an integer in 0.." + std::to_string(num_experts - 1));
    }
    spec.hot_expert = static_cast<std::int64_t>(expert);
    if (spec.hot_share < 0 || spec.hot_share > 1) bad_routing(text, "the share P must be in [0, 1]");
    // A token takes an expert at most once, so one expert holds at most 1/k of the assignments.
    if (top_k > 0 && spec.hot_share > 1.0 / static_cast<double>(top_k) + 1e-12) {
      std::ostringstream why;
      why << "P=" << spec.hot_share << " is more than 1/k=" << 1.0 / static_cast<double>(top_k)
          << " (a token takes an expert at most once)";
      bad_routing(text, why.str());
    }
    if (num_experts == 1 && spec.hot_share != 1) bad_routing(text, "with one expert P must be 1");
  } else {
    bad_routing(text, "unknown distribution");
  }
  // The gate [I_E | 0] needs an input coordinate per expert.
  if (d_model < num_experts) {
    bad_routing(text, "forced routing needs d_model (" + std::to_string(d_model) +
                          ") >= experts (" + std::to_string(num_experts) + ")");
  }
  return spec;
}

std::vector<double> routing_shares(const RoutingSpec& spec, std::int64_t num_experts) {
  const auto n = static_cast<std::size_t>(num_experts);
  std::vector<double> share(n, 1.0 / static_cast<double>(num_experts));
  if (spec.kind == RoutingSpec::Kind::zipf) {
    for (std::size_t e = 0; e < n; ++e) share[e] = 1.0 / std::pow(static_cast<double>(e + 1), spec.zipf_s);
  } else if (spec.kind == RoutingSpec::Kind::hot) {
    const double rest = num_experts > 1 ? (1 - spec.hot_share) / static_cast<double>(num_experts - 1) : 0;
    std::fill(share.begin(), share.end(), rest);
    share[static_cast<std::size_t>(spec.hot_expert)] = num_experts > 1 ? spec.hot_share : 1.0;
  }
  const double total = std::accumulate(share.begin(), share.end(), 0.0);
  for (double& s : share) s /= total;
  return share;
}

std::vector<std::int64_t> assignment_quota(std::span<const double> shares, std::int64_t num_tokens,
                                           std::int64_t top_k) {
  const std::size_t n = shares.size();
  const double cap = static_cast<double>(num_tokens);
  // Water-filling: experts whose share exceeds one assignment per token are fixed at T and the
  // rest of the assignments spread over the others in proportion to their shares.
  std::vector<double> target(n, 0.0);
  std::vector<bool> capped(n, false);
  double remaining = static_cast<double>(num_tokens * top_k);
  for (bool changed = true; changed;) {
    changed = false;
    double open_share = 0;
    for (std::size_t e = 0; e < n; ++e) open_share += capped[e] ? 0.0 : shares[e];
    for (std::size_t e = 0; e < n; ++e) {
      if (capped[e]) continue;
      target[e] = open_share > 0 ? shares[e] / open_share * remaining : 0.0;
      if (target[e] > cap) {
        target[e] = cap;
        capped[e] = true;
        remaining -= cap;
        changed = true;
      }
    }
  }
  // Largest remainder (ties to the smaller index), never past the cap.
  std::vector<std::int64_t> quota(n);
  std::int64_t assigned = 0;
  for (std::size_t e = 0; e < n; ++e) {
    quota[e] = static_cast<std::int64_t>(std::floor(target[e] + 1e-9));
    assigned += quota[e];
  }
  std::vector<std::size_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    return target[a] - std::floor(target[a]) > target[b] - std::floor(target[b]);
  });
  for (std::int64_t missing = num_tokens * top_k - assigned; missing > 0;) {
    bool progress = false;
    for (std::size_t e : order) {
      if (missing == 0) break;
      if (quota[e] < num_tokens) {
        ++quota[e];
        --missing;
        progress = true;
      }
    }
    if (!progress) break;  // cannot happen while k <= E
  }
  return quota;
}

std::vector<std::int32_t> forced_choices(const RoutingSpec& spec, std::int64_t num_experts,
                                         std::int64_t num_tokens, std::int64_t top_k,
                                         std::uint64_t seed, int rank) {
  const auto quota = assignment_quota(routing_shares(spec, num_experts), num_tokens, top_k);
  std::vector<std::int32_t> sequence;
  sequence.reserve(static_cast<std::size_t>(num_tokens * top_k));
  for (std::size_t e = 0; e < quota.size(); ++e) {
    sequence.insert(sequence.end(), static_cast<std::size_t>(quota[e]), static_cast<std::int32_t>(e));
  }
  std::vector<std::int64_t> token(static_cast<std::size_t>(num_tokens));
  std::iota(token.begin(), token.end(), 0);
  std::mt19937_64 generator(seed * 0x9E3779B97F4A7C15ULL + static_cast<std::uint64_t>(rank) + 1);
  std::shuffle(token.begin(), token.end(), generator);
  // Slot i goes to token i mod T as its choice i / T: an expert's run of at most T consecutive
  // slots lands on distinct tokens, so no token gets an expert twice.
  std::vector<std::int32_t> choices(static_cast<std::size_t>(num_tokens * top_k));
  for (std::size_t i = 0; i < sequence.size(); ++i) {
    const auto t = token[i % static_cast<std::size_t>(num_tokens)];
    const auto j = static_cast<std::int64_t>(i / static_cast<std::size_t>(num_tokens));
    choices[static_cast<std::size_t>(t * top_k + j)] = sequence[i];
  }
  return choices;
}

void write_forced_gate(std::span<float> gate, std::int64_t num_experts, std::int64_t d_model) {
  std::fill(gate.begin(), gate.end(), 0.0f);
  for (std::int64_t e = 0; e < num_experts; ++e) gate[static_cast<std::size_t>(e * d_model + e)] = 1.0f;
}

void write_forced_inputs(std::span<const std::int32_t> choices, std::span<float> x,
                         std::int64_t num_tokens, std::int64_t num_experts, std::int64_t d_model,
                         std::int64_t top_k) {
  for (std::int64_t t = 0; t < num_tokens; ++t) {
    float* row = x.data() + t * d_model;
    std::fill(row, row + num_experts, 0.0f);
    // Logits 2+k-j for choice j, 0 for the rest: exact in fp32, so the top-k is exactly these,
    // in this order.
    for (std::int64_t j = 0; j < top_k; ++j) {
      row[choices[static_cast<std::size_t>(t * top_k + j)]] = static_cast<float>(2 + top_k - j);
    }
  }
}

void apply_forced_routing(const RoutingSpec& spec, MoeLayer& layer, std::span<float> x,
                          std::int64_t num_tokens, std::uint64_t seed, int rank) {
  if (!spec.forced()) return;
  const MoeConfig& c = layer.config();
  write_forced_gate(layer.gate_weight(), c.num_experts, c.d_model);
  if (num_tokens == 0) return;
  const auto choices = forced_choices(spec, c.num_experts, num_tokens, c.top_k, seed, rank);
  write_forced_inputs(choices, x, num_tokens, c.num_experts, c.d_model, c.top_k);
}

double max_over_mean(std::span<const std::int64_t> counts) {
  if (counts.empty()) return 0;
  const double total = static_cast<double>(std::accumulate(counts.begin(), counts.end(), std::int64_t{0}));
  if (total <= 0) return 0;
  const double max = static_cast<double>(*std::max_element(counts.begin(), counts.end()));
  return max / (total / static_cast<double>(counts.size()));
}

}  // namespace moe::apps
