// The frame every moe-ep program runs in: MPI set up and torn down, and one policy for errors.
//
// A moe::Error has been agreed by all ranks (runtime/error.hpp), and a bad command line is seen
// alike by every rank: each rank prints the message and the program exits 1 after a normal
// MPI_Finalize. Anything else may have struck one rank alone while its peers wait in a
// collective, so the program prints it and calls MPI_Abort: the job ends instead of hanging.
#pragma once

#include <functional>
#include <string_view>

#include "comm/mpi_communicator.hpp"

namespace moe::apps {

// A command-line problem (unknown option, bad value). Thrown before any collective.
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Runs `body(world)` and returns the process exit code.
int run_mpi_program(std::string_view program, int argc, char** argv,
                    const std::function<int(comm::MpiCommunicator& world)>& body);

}  // namespace moe::apps
