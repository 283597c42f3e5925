// A StagedCommunicator over MPI_COMM_WORLD, for the tests of comm/staged_communicator.hpp: staged
// over HostAsDeviceCommunicator (tests/support/host_device_communicator.hpp), so every byte goes
// host -> staging -> MPI -> staging -> host, and a host buffer handed on unstaged fails the test.
#pragma once

#include <memory>
#include <utility>

#include "comm/mpi_communicator.hpp"
#include "comm/staged_communicator.hpp"
#include "tests/support/host_device_communicator.hpp"

namespace moe::comm::test {

struct StagedWorld {
  StagedWorld() {
    auto memory = std::make_unique<moe::test::HostStagingMemory>();
    staging = memory.get();
    comm = std::make_unique<StagedCommunicator>(device, std::move(memory));
  }

  std::unique_ptr<MpiCommunicator> world = MpiCommunicator::world();
  moe::test::HostAsDeviceCommunicator device{*world};
  moe::test::HostStagingMemory* staging = nullptr;  // owned by comm
  std::unique_ptr<StagedCommunicator> comm;
};

}  // namespace moe::comm::test
