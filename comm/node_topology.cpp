#include "comm/node_topology.hpp"

#include <stdexcept>

namespace moe::comm {

namespace {

// "ranks 0-1 on the host of rank 0, ranks 2-3 on the host of rank 2" for messages.
std::string placement_text(const std::vector<int>& leader) {
  std::string text;
  std::size_t first = 0;
  for (std::size_t r = 1; r <= leader.size(); ++r) {
    if (r < leader.size() && leader[r] == leader[first]) continue;
    // Appended piece by piece: GCC 12 warns falsely (-Wrestrict) on one long concatenation here.
    if (!text.empty()) text += ", ";
    text += r - first > 1 ? "ranks " : "rank ";
    text += std::to_string(first);
    if (r - first > 1) {
      text += '-';
      text += std::to_string(r - 1);
    }
    text += " on the host of rank ";
    text += std::to_string(leader[first]);
    first = r;
  }
  return text;
}

}  // namespace

std::string ranks_per_node_problem(int ranks_per_node, int size) {
  if (ranks_per_node < 0) {
    return "ranks_per_node=" + std::to_string(ranks_per_node) + " must be >= 0 (0: one node per host)";
  }
  if (ranks_per_node > 0 && size % ranks_per_node != 0) {
    return "ranks_per_node=" + std::to_string(ranks_per_node) + " does not divide the " +
           std::to_string(size) + " ranks (every node holds the same number of ranks)";
  }
  return {};
}

std::string blocks_problem(const NodeTopology& topology) {
  if (topology.ranks_per_node > 0) return {};
  return "the hierarchical exchange needs the same number of consecutive ranks on every node, but "
         "the hosts hold " + topology.placement + "; place the ranks by slot (mpirun --map-by slot) "
         "with the same count on every host, or set ranks_per_node";
}

NodeTopology discover_node_topology(Communicator& comm, int ranks_per_node) {
  const int size = comm.size();
  if (const std::string problem = ranks_per_node_problem(ranks_per_node, size); !problem.empty()) {
    throw std::invalid_argument(problem);
  }
  NodeTopology topology;
  topology.node_of_rank.resize(static_cast<std::size_t>(size));
  if (ranks_per_node > 0) {
    for (int r = 0; r < size; ++r) topology.node_of_rank[static_cast<std::size_t>(r)] = r / ranks_per_node;
    topology.num_nodes = size / ranks_per_node;
    topology.ranks_per_node = ranks_per_node;
    topology.placement = std::to_string(topology.num_nodes) + " nodes of " +
                         std::to_string(ranks_per_node) + " ranks (ranks_per_node)";
    return topology;
  }
  const int mine = comm.host_leader();
  std::vector<int> leader(static_cast<std::size_t>(size));
  comm.allgather(reinterpret_cast<const std::byte*>(&mine), reinterpret_cast<std::byte*>(leader.data()),
                 sizeof(int));
  // A host's number is its leader's place among the leaders (a leader is its host's lowest rank).
  std::vector<int> number(static_cast<std::size_t>(size), -1);
  topology.num_nodes = 0;
  for (int r = 0; r < size; ++r) {
    int& n = number[static_cast<std::size_t>(leader[static_cast<std::size_t>(r)])];
    if (n < 0) n = topology.num_nodes++;
    topology.node_of_rank[static_cast<std::size_t>(r)] = n;
  }
  // Equal consecutive blocks: every rank's leader is the start of its block.
  int block = 1;
  while (block < size && leader[static_cast<std::size_t>(block)] == leader[0]) ++block;
  bool blocks = size % block == 0;
  for (int r = 0; blocks && r < size; ++r) blocks = leader[static_cast<std::size_t>(r)] == r - r % block;
  topology.ranks_per_node = blocks ? block : 0;
  topology.placement = placement_text(leader);
  return topology;
}

}  // namespace moe::comm
