// A communicator's memory space is part of its type (comm/communicator.hpp). This file compiles
// as it stands; with MOE_MISMATCH set it makes one of the two mistakes the types forbid, and must
// then fail to compile (tests/comm/expect_compile_error.cmake):
//   host_layer_gets_device: the host layer given a device communicator (e.g. an NcclCommunicator);
//   device_path_gets_host:  a device-memory path given MPI over host memory.
#include <memory>

#include "comm/communicator.hpp"
#include "comm/mpi_communicator.hpp"
#include "runtime/moe_layer.hpp"

namespace {

// Stands for any device-path entry point: it takes a DeviceCommunicator.
[[maybe_unused]] void device_path(moe::comm::DeviceCommunicator& comm) { comm.barrier(); }

[[maybe_unused]] std::unique_ptr<moe::MoeLayer> host_layer(
    [[maybe_unused]] const moe::MoeConfig& config, [[maybe_unused]] moe::comm::MpiCommunicator& mpi,
    [[maybe_unused]] moe::comm::DeviceCommunicator& device) {
#if defined(MOE_MISMATCH_HOST_LAYER_GETS_DEVICE)
  return std::make_unique<moe::MoeLayer>(config, device);
#elif defined(MOE_MISMATCH_DEVICE_PATH_GETS_HOST)
  device_path(mpi);
  return nullptr;
#else
  device_path(device);
  return std::make_unique<moe::MoeLayer>(config, mpi);
#endif
}

}  // namespace
