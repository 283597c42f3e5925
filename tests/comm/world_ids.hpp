// Who is who in the communicator tests: a rank's place in MPI_COMM_WORLD, the identity the payload
// patterns (tests/comm/pattern.hpp) are made from, so a block that leaked across split groups
// would not match.
#pragma once

#include <mpi.h>

#include <cstddef>
#include <vector>

#include "comm/communicator.hpp"

namespace moe::comm::test {

inline int world_rank() {
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  return rank;
}

// World rank of every rank of `comm`, in comm order, gathered through `comm` itself.
inline std::vector<int> world_ids(Communicator& comm) {
  const int mine = world_rank();
  std::vector<int> ids(static_cast<std::size_t>(comm.size()));
  comm.allgather(reinterpret_cast<const std::byte*>(&mine), reinterpret_cast<std::byte*>(ids.data()),
                 sizeof(int));
  return ids;
}

}  // namespace moe::comm::test
