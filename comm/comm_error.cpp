#include "comm/comm_error.hpp"

#include <mpi.h>
#include <unistd.h>

#include <array>
#include <utility>

namespace moe::comm {

CommError::CommError(const std::string& message, int world_rank, std::string host)
    : std::runtime_error(message), world_rank_(world_rank), host_(std::move(host)) {}

const std::string& this_host_name() {
  static const std::string name = [] {
    // HOST_NAME_MAX is 64 on Linux; the extra byte guarantees termination when the name is cut.
    std::array<char, 256> buffer{};
    if (gethostname(buffer.data(), buffer.size() - 1) != 0) return std::string("unknown-host");
    return std::string(buffer.data());
  }();
  return name;
}

int this_world_rank() noexcept {
  int initialized = 0;
  int finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (initialized == 0 || finalized != 0) return -1;
  int rank = -1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  return rank;
}

void throw_comm_error(std::string_view what, const char* file, int line) {
  const int rank = this_world_rank();
  const std::string& host = this_host_name();
  std::string message(what);
  message += " (rank ";
  message += rank >= 0 ? std::to_string(rank) : std::string("?");
  message += " on host ";
  message += host;
  message += ", ";
  message += file;
  message += ':';
  message += std::to_string(line);
  message += ')';
  throw CommError(message, rank, host);
}

}  // namespace moe::comm
