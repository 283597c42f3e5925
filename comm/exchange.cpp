#include "comm/exchange.hpp"

#include <stdexcept>
#include <string>

namespace moe::comm {

std::vector<std::size_t> exchange_counts(Communicator& comm,
                                         std::span<const std::size_t> send_counts) {
  std::vector<std::size_t> recv_counts(static_cast<std::size_t>(comm.size()));
  exchange_counts(comm, send_counts, recv_counts);
  return recv_counts;
}

void exchange_counts(Communicator& comm, std::span<const std::size_t> send_counts,
                     std::span<std::size_t> recv_counts) {
  const auto n = static_cast<std::size_t>(comm.size());
  if (send_counts.size() != n || recv_counts.size() != n) {
    throw std::invalid_argument("exchange_counts: " + std::to_string(send_counts.size()) +
                                " send and " + std::to_string(recv_counts.size()) +
                                " receive counts for a communicator of size " +
                                std::to_string(n));
  }
  // size_t has the same width on every rank of one job (one binary), so raw bytes are enough.
  comm.alltoall(reinterpret_cast<const std::byte*>(send_counts.data()),
                reinterpret_cast<std::byte*>(recv_counts.data()), sizeof(std::size_t));
}

}  // namespace moe::comm
