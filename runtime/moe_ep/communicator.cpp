#include "runtime/moe_ep/communicator.hpp"

#include "comm/mpi_communicator.hpp"

namespace moe_ep {

std::unique_ptr<Communicator> mpi_communicator(MPI_Comm comm) {
  return std::make_unique<moe::comm::MpiCommunicator>(comm);
}

}  // namespace moe_ep
