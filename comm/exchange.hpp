// The two-phase exchange every variable all-to-all in moe-ep follows: counts first, then payload.
//
// A receiver cannot size its buffer for data whose amount only the senders know. So the ranks
// first swap their per-peer counts with a fixed-size all-to-all (one size_t per peer), each rank
// learns how much will arrive from whom, sizes (or checks) its receive buffer, and only then the
// payload moves with Communicator::alltoallv using the two count arrays:
//
//   std::vector<std::size_t> recv_bytes = exchange_counts(comm, send_bytes);
//   recv.resize(sum(recv_bytes));
//   comm.alltoallv(send.data(), send_bytes, recv.data(), recv_bytes);
//
// The counts are in whatever unit the caller likes (rows, bytes); alltoallv needs bytes.
#pragma once

#include <cstddef>
#include <span>
#include <vector>

#include "comm/communicator.hpp"

namespace moe::comm {

// Collective: send_counts[p] is what this rank will send to rank p; the result's entry q is what
// rank q will send to this rank. Throws std::invalid_argument when send_counts does not have
// comm.size() entries.
std::vector<std::size_t> exchange_counts(Communicator& comm,
                                         std::span<const std::size_t> send_counts);

// The same into caller-owned storage, for hot paths that must not allocate: recv_counts must have
// comm.size() entries.
void exchange_counts(Communicator& comm, std::span<const std::size_t> send_counts,
                     std::span<std::size_t> recv_counts);

}  // namespace moe::comm
