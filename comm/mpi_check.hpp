// MOE_CHECK_MPI: turns a failed MPI call into a CommError that quotes the call, MPI's own error
// text, the rank, the host and file:line. It only sees errors when the communicator's error
// handler is MPI_ERRORS_RETURN (MpiCommunicator sets it); under MPI's default handler
// (MPI_ERRORS_ARE_FATAL) the job aborts inside the call instead.
#pragma once

#include <mpi.h>

#include "comm/comm_error.hpp"

namespace moe::comm::detail {

// Builds the message for return code `code` of the call spelled `call` and throws CommError.
[[noreturn]] void throw_mpi_error(int code, const char* call, const char* file, int line);

}  // namespace moe::comm::detail

// Evaluates `call` once; throws moe::comm::CommError unless it returns MPI_SUCCESS.
#define MOE_CHECK_MPI(call)                                                          \
  do {                                                                               \
    const int moe_check_mpi_code_ = (call);                                          \
    if (moe_check_mpi_code_ != MPI_SUCCESS) {                                        \
      ::moe::comm::detail::throw_mpi_error(moe_check_mpi_code_, #call, __FILE__, __LINE__); \
    }                                                                                \
  } while (false)
