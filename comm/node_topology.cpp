#include "comm/node_topology.hpp"

#include <stdexcept>
#include <string>
#include <vector>

namespace moe::comm {

namespace {

// "ranks 0-1 on host of rank 0, ranks 2-3 on host of rank 2" for messages.
std::string placement_text(const std::vector<int>& leader) {
  std::string text;
  std::size_t first = 0;
  for (std::size_t r = 1; r <= leader.size(); ++r) {
    if (r < leader.size() && leader[r] == leader[first]) continue;
    if (!text.empty()) text += ", ";
    text += "rank" + std::string(r - first > 1 ? "s " : " ") + std::to_string(first) +
            (r - first > 1 ? "-" + std::to_string(r - 1) : "") + " on the host of rank " +
            std::to_string(leader[first]);
    first = r;
  }
  return text;
}

}  // namespace

NodeTopology discover_node_topology(Communicator& comm, int ranks_per_node) {
  const int size = comm.size();
  if (ranks_per_node > 0) {
    if (size % ranks_per_node != 0) {
      throw std::invalid_argument("ranks_per_node=" + std::to_string(ranks_per_node) +
                                  " does not divide the " + std::to_string(size) +
                                  " ranks (every node holds the same number of ranks)");
    }
    return {ranks_per_node, size / ranks_per_node};
  }
  if (ranks_per_node < 0) {
    throw std::invalid_argument("ranks_per_node=" + std::to_string(ranks_per_node) +
                                " must be >= 0 (0: one node per host)");
  }
  const int mine = comm.host_leader();
  std::vector<int> leader(static_cast<std::size_t>(size));
  comm.allgather(reinterpret_cast<const std::byte*>(&mine), reinterpret_cast<std::byte*>(leader.data()),
                 sizeof(int));
  // Equal consecutive blocks: a host starts where its leader is, and every block is as long as
  // the first.
  int block = 1;
  while (block < size && leader[static_cast<std::size_t>(block)] == leader[0]) ++block;
  bool blocks = size % block == 0;
  for (int r = 0; blocks && r < size; ++r) blocks = leader[static_cast<std::size_t>(r)] == r - r % block;
  if (!blocks) {
    throw std::invalid_argument(
        "the hosts do not hold equal blocks of consecutive ranks (" + placement_text(leader) +
        "); place the ranks by slot (mpirun --map-by slot) with the same count on every host, or "
        "set ranks_per_node");
  }
  return {block, size / block};
}

}  // namespace moe::comm
