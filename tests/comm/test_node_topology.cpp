// Ranks grouped by node (comm/node_topology.hpp): from the hosts (one here: every test rank shares
// this machine), from ranks_per_node, and the refusals.
#include <catch2/catch.hpp>

#include <stdexcept>

#include "comm/mpi_communicator.hpp"
#include "comm/node_topology.hpp"

using moe::comm::NodeTopology;

TEST_CASE("node topology: the hosts, or blocks of ranks_per_node", "[comm][nodes]") {
  auto world = moe::comm::MpiCommunicator::world();
  const int size = world->size();
  const NodeTopology hosts = moe::comm::discover_node_topology(*world, 0);
  CHECK(hosts.num_nodes == 1);
  CHECK(hosts.ranks_per_node == size);
  CHECK(moe::comm::blocks_problem(hosts).empty());

  const NodeTopology single = moe::comm::discover_node_topology(*world, 1);
  CHECK(single.num_nodes == size);
  CHECK(single.node_of(size - 1) == size - 1);
  if (size == 4) {
    const NodeTopology pairs = moe::comm::discover_node_topology(*world, 2);
    CHECK(pairs.node_of_rank == std::vector<int>{0, 0, 1, 1});
    CHECK(pairs.local_rank_of(3) == 1);
  }
  CHECK_THROWS_WITH(moe::comm::discover_node_topology(*world, size + 1),
                    "ranks_per_node=" + std::to_string(size + 1) + " does not divide the " +
                        std::to_string(size) + " ranks (every node holds the same number of ranks)");
  CHECK_THROWS_AS(moe::comm::discover_node_topology(*world, -1), std::invalid_argument);
}

TEST_CASE("node topology: hosts that are not equal blocks are refused for two levels", "[comm][nodes]") {
  NodeTopology interleaved;
  interleaved.node_of_rank = {0, 1, 0, 1};  // mpirun --map-by node
  interleaved.num_nodes = 2;
  interleaved.placement = "rank 0 on the host of rank 0, rank 1 on the host of rank 1, ...";
  CHECK_THAT(moe::comm::blocks_problem(interleaved),
             Catch::StartsWith("the hierarchical exchange needs the same number of consecutive ranks") &&
                 Catch::Contains("rank 1 on the host of rank 1"));
}
