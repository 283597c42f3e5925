// Which node (host) each rank of a communicator is on, for the two-level exchange
// (comm/hierarchical_exchange.hpp), the two-class simulated link (comm/simulated_link.hpp) and the
// statistics of traffic between nodes.
//
// The two-level exchange needs blocks: node n holds ranks n*ranks_per_node ...
// (n+1)*ranks_per_node - 1, the same count on every node, so that rank (n, l) has a peer of the
// same local index l on every other node. That is how mpirun places ranks by default (--map-by
// slot); `ranks_per_node` can also be set, to simulate several nodes on one host.
#pragma once

#include <string>
#include <vector>

#include "comm/communicator.hpp"

namespace moe::comm {

struct NodeTopology {
  std::vector<int> node_of_rank;  // nodes numbered in the order of their lowest rank
  int num_nodes = 1;
  // When every node holds an equal block of consecutive ranks: its size; otherwise 0.
  int ranks_per_node = 0;
  // How the ranks sit on the hosts, for messages ("ranks 0-1 on the host of rank 0, ...").
  std::string placement;

  int node_of(int rank) const { return node_of_rank[static_cast<std::size_t>(rank)]; }
  // Only with blocks (ranks_per_node > 0).
  int local_rank_of(int rank) const { return rank % ranks_per_node; }
};

// Collective over `comm`. ranks_per_node > 0: blocks of that many ranks. 0: the hosts as MPI sees
// them (Communicator::host_leader), in whatever layout they hold. Throws std::invalid_argument
// (the same on every rank) for what ranks_per_node_problem reports.
NodeTopology discover_node_topology(Communicator& comm, int ranks_per_node);

// Not collective: "" when ranks_per_node suits `size` ranks (>= 0 and, when > 0, dividing it),
// else why not. Lets a caller agree on the error before entering the discovery's collectives.
std::string ranks_per_node_problem(int ranks_per_node, int size);
// "" when the nodes are equal blocks of consecutive ranks (what the two-level exchange needs),
// else why not and what to do.
std::string blocks_problem(const NodeTopology& topology);

}  // namespace moe::comm
