// RAII owner of the MPI runtime for programs (apps/): MPI_Init_thread in the constructor,
// MPI_Finalize in the destructor.
#pragma once

namespace moe::comm {

class MpiEnvironment {
 public:
  // Initialises MPI requesting MPI_THREAD_MULTIPLE (so that, e.g., an exchange thread and a
  // compute thread may both call MPI); the level actually provided is recorded, not enforced:
  // check thread_multiple() before using MPI from several threads. When MPI is already running
  // (a host program such as mpi4py started it) nothing is initialised and nothing is finalised.
  // Throws CommError when MPI_Init_thread fails.
  MpiEnvironment(int& argc, char**& argv);

  // Finalises MPI if this object initialised it and nobody finalised it already. If the object is
  // being destroyed because an exception is passing through, it calls MPI_Abort instead: the other
  // ranks may be blocked in a collective this rank will never join, and MPI_Finalize would hang.
  ~MpiEnvironment();

  MpiEnvironment(const MpiEnvironment&) = delete;
  MpiEnvironment& operator=(const MpiEnvironment&) = delete;

  // Thread support level MPI provided (MPI_THREAD_SINGLE ... MPI_THREAD_MULTIPLE).
  int thread_level() const noexcept { return thread_level_; }

  // True when MPI provided MPI_THREAD_MULTIPLE.
  bool thread_multiple() const noexcept;

  // True when this object initialised MPI (and so will finalise it).
  bool owns_mpi() const noexcept { return owns_mpi_; }

  // Ends every process of the job with `exit_code` (MPI_Abort on MPI_COMM_WORLD); for errors that
  // the ranks could not agree on.
  [[noreturn]] void abort(int exit_code) const noexcept;

 private:
  int thread_level_ = 0;
  bool owns_mpi_ = false;
  int uncaught_at_construction_ = 0;
};

}  // namespace moe::comm
