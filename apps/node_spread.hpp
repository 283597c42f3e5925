// How many nodes each token's kept assignments reach: the quantity node-limited routing (SPEC.md
// section 3, groups aligned with nodes, topk_group = M) bounds by M, and the number of times the
// hierarchical exchange sends the token's row across nodes (its own node included).
#pragma once

#include <cstdint>

#include "comm/communicator.hpp"
#include "runtime/moe_layer.hpp"

namespace moe::apps {

struct NodeSpread {
  double mean = 0;        // over every token of the group (a token with all choices dropped: 0)
  std::int64_t most = 0;  // the largest over the group
};

// Collective over the layer's group `ep`: the spread of the forward that filled `ctx`.
NodeSpread node_spread(comm::Communicator& ep, const MoeLayer& layer, const ForwardContext& ctx);

}  // namespace moe::apps
