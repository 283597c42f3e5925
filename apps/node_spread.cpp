#include "apps/node_spread.hpp"

#include <algorithm>
#include <span>
#include <vector>

namespace moe::apps {

NodeSpread node_spread(comm::Communicator& ep, const MoeLayer& layer, const ForwardContext& ctx) {
  const std::int64_t k = layer.config().top_k, num_experts = layer.config().num_experts;
  const std::span<const std::int32_t> experts = ctx.selected_experts();
  std::vector<int> nodes;
  std::int64_t sums[2] = {0, ctx.num_tokens()};  // nodes over all tokens, tokens
  std::int64_t most = 0;
  for (std::int64_t t = 0; t < ctx.num_tokens(); ++t) {
    nodes.clear();
    for (std::int64_t j = 0; j < k; ++j) {
      if (!ctx.kept(t, j)) continue;
      const auto owner = owner_of_expert(experts[static_cast<std::size_t>(t * k + j)], num_experts, layer.ep_size());
      nodes.push_back(layer.topology().node_of(static_cast<int>(owner)));
    }
    std::sort(nodes.begin(), nodes.end());
    const auto distinct = static_cast<std::int64_t>(std::unique(nodes.begin(), nodes.end()) - nodes.begin());
    sums[0] += distinct;
    most = std::max(most, distinct);
  }
  ep.allreduce(std::span<std::int64_t>(sums), comm::ReduceOp::sum);
  ep.allreduce(std::span<std::int64_t>(&most, 1), comm::ReduceOp::max);
  NodeSpread spread;
  spread.mean = sums[1] > 0 ? static_cast<double>(sums[0]) / static_cast<double>(sums[1]) : 0.0;
  spread.most = most;
  return spread;
}

}  // namespace moe::apps
