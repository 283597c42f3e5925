// Routing half of the reference, shared by run_reference and the case generator (which redraws
// rows until every decision has a clear margin). Not part of the public reference API.
#pragma once

#include "tests/reference/moe_reference.hpp"

#include <cstdint>
#include <vector>

namespace moe::ref::detail {

struct Routing {
  std::vector<double> logits;           // [T, E] z (SPEC 3)
  std::vector<double> scores;           // [T, E] s: softmax or sigmoid of z (SPEC 3)
  std::vector<double> probs;            // [T, E] p of the load-balancing loss (SPEC 7)
  std::vector<double> lse;              // [T] logsumexp of the logits (SPEC 7)
  std::vector<std::int64_t> choices;    // [T, k]
  std::vector<double> weights;          // [T, k], the final w (normalized, scaled)
  std::vector<bool> kept;               // [T, k]
  std::vector<std::int64_t> counts, kept_counts;  // [E]
  double min_margin = 0;
  // Per token: the smallest margin of a decision that this token's row can move (its own top-k
  // and group gaps; with the score policy, the gap at a capacity cut where it is the first
  // dropped).
  std::vector<double> token_margin;
};

// Throws std::invalid_argument unless the case satisfies SPEC §1-§5 (sizes, names, ranges).
void validate(const LayerCase& c);

// SPEC §3-§4 for every rank; validates the case (std::invalid_argument).
Routing route(const LayerCase& c);

inline bool is_swiglu(const LayerConfig& c) { return c.activation == "swiglu"; }
inline bool is_sigmoid(const LayerConfig& c) { return c.gate == "sigmoid"; }

}  // namespace moe::ref::detail
