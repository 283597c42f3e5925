// Gathers every rank's rows on rank 0, for programs that write one result file from a job.
#pragma once

#include <span>
#include <vector>

#include "comm/communicator.hpp"

namespace moe::comm {

// Collective. Rank 0 gets every rank's `local` concatenated in rank order (lengths may differ);
// the other ranks get an empty vector. One allgather of the lengths, then an all-to-all where
// only rank 0 receives.
std::vector<float> gather_to_root(Communicator& comm, std::span<const float> local);

}  // namespace moe::comm
