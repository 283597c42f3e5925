// --routing for moe-bench: forced routing distributions for throughput studies, made without
// touching the layer. The learned router computes logits x·gateᵀ; with gate = [I_E | 0] (scaled)
// the logit of expert e is input coordinate e, so writing chosen values into the first E input
// coordinates of each token picks exactly its top-k experts (the other coordinates stay the
// random input and only reach the experts). Hence forced routing needs d_model >= E.
//
//   learned        the router as initialised (no change)
//   balanced       every expert gets T·k/E assignments of each rank's T tokens
//   zipf:S         expert e's share of assignments ∝ 1/(e+1)^S (expert 0 the most popular)
//   hot:E,P        expert E gets a share P of the assignments, the others share the rest evenly
//
// A token takes an expert at most once, so an expert's share cannot exceed 1/k: `hot` with a
// larger P is refused, `zipf` is capped there (the achieved load is what moe-bench reports).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace moe { class MoeLayer; }

namespace moe::apps {

struct RoutingSpec {
  enum class Kind { learned, balanced, zipf, hot };
  Kind kind = Kind::learned;
  double zipf_s = 0;          // zipf:S
  std::int64_t hot_expert = 0;  // hot:E,P
  double hot_share = 0;
  std::string text = "learned";  // as given, for tables and JSON

  bool forced() const { return kind != Kind::learned; }
};

// Parses --routing; throws UsageError naming the option for a malformed or impossible value.
RoutingSpec parse_routing(const std::string& text, std::int64_t num_experts, std::int64_t top_k,
                          std::int64_t d_model);

// Each expert's share of the assignments (sums to 1) before capping at 1/k.
std::vector<double> routing_shares(const RoutingSpec& spec, std::int64_t num_experts);

// How many of T·k assignments each expert gets: shares rounded by largest remainder, each at most
// T (one per token). Sums to T·k.
std::vector<std::int64_t> assignment_quota(std::span<const double> shares, std::int64_t num_tokens,
                                           std::int64_t top_k);

// [T, k] expert of each token's j-th choice, from the quota: distinct experts per token, tokens
// shuffled by (seed, rank) so neither token order nor rank correlates with an expert.
std::vector<std::int32_t> forced_choices(const RoutingSpec& spec, std::int64_t num_experts,
                                         std::int64_t num_tokens, std::int64_t top_k,
                                         std::uint64_t seed, int rank);

// The two halves of apply_forced_routing, on plain spans (for tests): the gate [E, d] = [I_E | 0],
// and the first E coordinates of every token of x [T, d] from forced_choices.
void write_forced_gate(std::span<float> gate, std::int64_t num_experts, std::int64_t d_model);
void write_forced_inputs(std::span<const std::int32_t> choices, std::span<float> x,
                         std::int64_t num_tokens, std::int64_t num_experts, std::int64_t d_model,
                         std::int64_t top_k);

// Makes the layer route x [T, d] as `spec` says: sets the gate to a scaled [I_E | 0] and writes
// the first E coordinates of every token (0 for experts not chosen, descending values for its k
// choices). No-op for `learned`.
void apply_forced_routing(const RoutingSpec& spec, MoeLayer& layer, std::span<float> x,
                          std::int64_t num_tokens, std::uint64_t seed, int rank);

// max over experts / mean over experts of `counts` (1 when all are equal; 0 when all are 0).
double max_over_mean(std::span<const std::int64_t> counts);

}  // namespace moe::apps
