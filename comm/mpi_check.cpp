#include "comm/mpi_check.hpp"

#include <string>

namespace moe::comm::detail {

void throw_mpi_error(int code, const char* call, const char* file, int line) {
  std::string text = "MPI call failed: ";
  text += call;
  text += ": ";
  char mpi_text[MPI_MAX_ERROR_STRING] = {};
  int length = 0;
  // MPI_Error_string is one of the few calls allowed before MPI_Init and after MPI_Finalize.
  if (MPI_Error_string(code, mpi_text, &length) == MPI_SUCCESS && length > 0) {
    text.append(mpi_text, static_cast<std::size_t>(length));
  } else {
    text += "unknown MPI error";
  }
  text += " (MPI error code " + std::to_string(code) + ")";
  throw_comm_error(text, file, line);
}

}  // namespace moe::comm::detail
