// Which node (host) each rank of a communicator is on, for the two-level exchange
// (comm/hierarchical_exchange.hpp) and the two-class simulated link (comm/simulated_link.hpp).
//
// The layout is always blocks of equal size of consecutive ranks: node n holds ranks
// n*ranks_per_node ... (n+1)*ranks_per_node - 1. That is how mpirun places ranks by default
// (--map-by slot), and it lets rank (n, l) talk to its peer of the same local index l on every
// other node. `ranks_per_node` can be set to simulate several nodes on one host.
#pragma once

#include "comm/communicator.hpp"

namespace moe::comm {

struct NodeTopology {
  int ranks_per_node = 1;
  int num_nodes = 1;

  int node_of(int rank) const { return rank / ranks_per_node; }
  int local_rank_of(int rank) const { return rank % ranks_per_node; }
};

// Collective over `comm`. ranks_per_node > 0: blocks of that many ranks, which must divide
// comm.size(). 0: the hosts as MPI sees them (Communicator::host_leader), which must hold equal
// blocks of consecutive ranks. Throws std::invalid_argument otherwise, with the same message on
// every rank (it is decided from values every rank holds), saying how the ranks are placed.
NodeTopology discover_node_topology(Communicator& comm, int ranks_per_node);

}  // namespace moe::comm
