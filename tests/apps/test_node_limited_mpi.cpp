// Node-limited routing (SPEC.md section 3): with one expert group per node and topk_group = M, no
// token's kept choices reach more than M nodes, so the hierarchical exchange sends each token
// across at most M times. Every rank is a node (ranks_per_node = 1), two experts each.
#include <catch2/catch.hpp>

#include <algorithm>
#include <vector>

#include "apps/node_spread.hpp"
#include "comm/mpi_communicator.hpp"
#include "runtime/initialization.hpp"
#include "runtime/moe_layer.hpp"

namespace {

using namespace moe;

apps::NodeSpread spread_with(comm::Communicator& world, std::int64_t topk_group, std::int64_t top_k) {
  MoeConfig config;
  config.num_experts = 2 * world.size();
  config.d_model = 32;
  config.d_hidden = 16;
  config.n_group = world.size();
  config.topk_group = topk_group;
  config.top_k = top_k;
  config.capacity_factor = 0;  // dropless: every choice is kept
  config.exchange = ExchangeKind::hierarchical;
  config.ranks_per_node = 1;
  MoeLayer layer(config, world);
  REQUIRE(layer.topology().num_nodes == world.size());
  init_parameters(layer, 11);
  const std::int64_t tokens = 96 + 17 * world.rank();
  std::vector<float> x(static_cast<std::size_t>(tokens * config.d_model)), y(x.size());
  fill_normal(x, 12, "input.rank" + std::to_string(world.rank()));
  ForwardContext ctx;
  layer.forward(x, y, ctx);
  return apps::node_spread(world, layer, ctx);
}

}  // namespace

TEST_CASE("node-limited routing: a token reaches at most topk_group nodes", "[routing][nodes]") {
  auto world = comm::MpiCommunicator::world();
  const std::int64_t limit = std::max(1, world->size() / 2);
  const std::int64_t top_k = 2 * limit;  // as many experts as `limit` nodes hold
  const apps::NodeSpread limited = spread_with(*world, limit, top_k);
  CHECK(limited.most == limit);
  CHECK(limited.mean <= static_cast<double>(limit));
  // The same choices without the limit spread wider: the bound above is the routing's doing.
  const apps::NodeSpread free = spread_with(*world, world->size(), top_k);
  CHECK(free.most > limit);
  CHECK(free.mean > limited.mean);
}
