#include "comm/mpi_environment.hpp"

#include <mpi.h>

#include <cstdlib>
#include <exception>

#include "comm/mpi_check.hpp"

namespace moe::comm {

MpiEnvironment::MpiEnvironment(int& argc, char**& argv)
    : uncaught_at_construction_(std::uncaught_exceptions()) {
  int initialized = 0;
  MOE_CHECK_MPI(MPI_Initialized(&initialized));
  if (initialized != 0) {
    MOE_CHECK_MPI(MPI_Query_thread(&thread_level_));
    return;
  }
  MOE_CHECK_MPI(MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &thread_level_));
  owns_mpi_ = true;
}

MpiEnvironment::~MpiEnvironment() {
  if (!owns_mpi_) return;
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized != 0) return;
  if (std::uncaught_exceptions() > uncaught_at_construction_) {
    MPI_Abort(MPI_COMM_WORLD, EXIT_FAILURE);
    return;
  }
  MPI_Finalize();
}

bool MpiEnvironment::thread_multiple() const noexcept {
  return thread_level_ >= MPI_THREAD_MULTIPLE;
}

void MpiEnvironment::abort(int exit_code) const noexcept {
  MPI_Abort(MPI_COMM_WORLD, exit_code);
  // MPI_Abort is not declared noreturn; an implementation that returns must still not continue.
  std::abort();
}

}  // namespace moe::comm
