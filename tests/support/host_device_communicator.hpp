// Stand-ins that let a StagedCommunicator (comm/staged_communicator.hpp) run over real MPI on a
// machine without a GPU: a DeviceCommunicator whose "device" memory is host memory, and the host
// StagingMemory that provides that memory.
//
// So that a test fails when host buffers reach the device communicator (the mistake staging is
// there to prevent), HostStagingMemory registers what grow() returns as "device memory", and
// HostAsDeviceCommunicator refuses (std::logic_error) every buffer outside those regions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "comm/communicator.hpp"
#include "comm/staged_communicator.hpp"

namespace moe::test {

class HostStagingMemory final : public comm::StagingMemory {
 public:
  HostStagingMemory() = default;
  ~HostStagingMemory() override;
  HostStagingMemory(const HostStagingMemory&) = delete;
  HostStagingMemory& operator=(const HostStagingMemory&) = delete;

  // operator new's alignment covers every scalar type, as the interface asks.
  std::byte* grow(std::size_t bytes) override;
  // Throw std::logic_error when `device` is not inside this object's memory.
  void to_device(std::byte* device, const std::byte* host, std::size_t bytes) override;
  void to_host(std::byte* host, const std::byte* device, std::size_t bytes) override;
  std::unique_ptr<comm::StagingMemory> make_another() const override;

  // How often grow() has allocated.
  int allocations() const noexcept { return allocations_; }

 private:
  void check_inside(const std::byte* device, std::size_t bytes, const char* what) const;

  std::vector<std::byte> data_;
  int allocations_ = 0;
};

// A DeviceCommunicator over a host communicator (MpiCommunicator in the tests): the operations
// of `inner` on buffers that must be staged memory.
class HostAsDeviceCommunicator final : public comm::DeviceCommunicator {
 public:
  // Without owning `inner`: it must outlive this object.
  explicit HostAsDeviceCommunicator(comm::Communicator& inner);
  // Owning it (what split() returns).
  explicit HostAsDeviceCommunicator(std::unique_ptr<comm::Communicator> inner);

  int rank() const override { return inner_.rank(); }
  int size() const override { return inner_.size(); }
  const std::string& host() const override { return inner_.host(); }
  std::unique_ptr<comm::DeviceCommunicator> split(int color, int key) const override;
  int host_leader() const override { return inner_.host_leader(); }

  void alltoallv(const std::byte* send, std::span<const std::size_t> send_bytes, std::byte* recv,
                 std::span<const std::size_t> recv_bytes) override;
  void alltoall(const std::byte* send, std::byte* recv, std::size_t block_bytes) override;
  void allgather(const std::byte* send, std::byte* recv, std::size_t block_bytes) override;
  void allreduce(std::span<float> data, comm::ReduceOp op) override;
  void allreduce(std::span<double> data, comm::ReduceOp op) override;
  void allreduce(std::span<std::int64_t> data, comm::ReduceOp op) override;
  void barrier() override { inner_.barrier(); }

  void set_wait_mode(WaitMode mode) override;
  void set_timeout(double seconds) override { inner_.set_timeout(seconds); }
  void set_watchdog_action(comm::WatchdogAction action) override { inner_.set_watchdog_action(action); }
  void set_context(const comm::OperationContext& context) override { inner_.set_context(context); }

 private:
  std::unique_ptr<comm::Communicator> owned_;
  comm::Communicator& inner_;
};

}  // namespace moe::test
