// Communicators of moe-ep's public API: the seam every collective goes through, and its MPI
// implementation. A trainer that owns MPI passes its own communicator; moe-ep duplicates it, so
// its traffic never matches the trainer's messages.
#pragma once

#include <mpi.h>

#include <memory>

#include "comm/communicator.hpp"
#include "comm/mpi_environment.hpp"

namespace moe_ep {

using Communicator = moe::comm::Communicator;
// MPI_Init_thread / MPI_Finalize for programs that do not start MPI themselves (reuses MPI when
// it is already running).
using MpiEnvironment = moe::comm::MpiEnvironment;

// Collective over `comm`: a communicator over the same ranks (a duplicate of `comm`).
std::unique_ptr<Communicator> mpi_communicator(MPI_Comm comm);

}  // namespace moe_ep
