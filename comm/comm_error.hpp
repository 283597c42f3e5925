// The one exception type of comm/: every failure of the network layer says what failed, on which
// rank of MPI_COMM_WORLD, on which host, and where in the source.
#pragma once

#include <stdexcept>
#include <string>
#include <string_view>

namespace moe::comm {

class CommError : public std::runtime_error {
 public:
  // `message` is the complete text (see throw_comm_error for the usual way to build one).
  CommError(const std::string& message, int world_rank, std::string host);

  // Rank in MPI_COMM_WORLD of the process that raised the error; -1 when MPI was not running.
  int world_rank() const noexcept { return world_rank_; }
  // Host name of the process that raised the error.
  const std::string& host() const noexcept { return host_; }

 private:
  int world_rank_;
  std::string host_;
};

// Host name of this process (gethostname), cached after the first call; "unknown-host" if the
// system call fails. Safe to call before MPI_Init and after MPI_Finalize.
const std::string& this_host_name();

// Rank of this process in MPI_COMM_WORLD, or -1 when MPI is not initialised or already finalised
// (errors can happen in both states and must still produce a message).
int this_world_rank() noexcept;

// Throws CommError with the text "`what` (rank R on host H, file:line)".
[[noreturn]] void throw_comm_error(std::string_view what, const char* file, int line);

}  // namespace moe::comm
