#include "comm/gather.hpp"

#include <cstdint>

namespace moe::comm {

std::vector<float> gather_to_root(Communicator& comm, std::span<const float> local) {
  const auto size = static_cast<std::size_t>(comm.size());
  std::vector<std::int64_t> lengths(size);
  const auto mine = static_cast<std::int64_t>(local.size());
  comm.allgather(reinterpret_cast<const std::byte*>(&mine), reinterpret_cast<std::byte*>(lengths.data()),
                 sizeof mine);
  std::vector<std::size_t> send_bytes(size, 0);
  std::vector<std::size_t> recv_bytes(size, 0);
  send_bytes[0] = local.size() * sizeof(float);
  std::size_t total = 0;
  if (comm.rank() == 0) {
    for (std::size_t r = 0; r < size; ++r) {
      recv_bytes[r] = static_cast<std::size_t>(lengths[r]) * sizeof(float);
      total += static_cast<std::size_t>(lengths[r]);
    }
  }
  std::vector<float> all(total);
  comm.alltoallv(reinterpret_cast<const std::byte*>(local.data()), send_bytes,
                 reinterpret_cast<std::byte*>(all.data()), recv_bytes);
  return all;
}

}  // namespace moe::comm
