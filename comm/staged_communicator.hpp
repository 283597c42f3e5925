// A host Communicator whose operations travel over a DeviceCommunicator: each one copies the
// caller's host buffers into device staging memory, runs the device communicator's operation on
// the staged copy, and copies the result back. With it the device path's control traffic (the
// plan's counts, the error agreement, statistics: a few hundred bytes per call) rides the NCCL
// communicator its rows use, so after NCCL's bootstrap no MPI call happens on that path.
//
// The staging memory only grows, to the largest operation seen, so after warm-up no operation
// allocates. The device communicator's errors, CommError and WatchdogTimeout included, pass
// through unchanged: a stalled count exchange is reported by its watchdog exactly as a stalled
// row exchange is. The caller's buffers are only ever touched by the two copies, which run on this
// thread before and after the operation, so the watchdog's throw_error contract (no caller buffer
// written after the throw) holds without further work.
//
// Thread safety: one object is used by one thread at a time, as the device communicator; a
// communicator returned by split() has its own staging memory, so the two may be used from two
// threads when their device communicators allow it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "comm/communicator.hpp"

namespace moe::comm {

// Device memory for staging, and the copies between it and the host, for one device communicator.
// CudaStagingMemory (comm/cuda_staging_memory.hpp, CUDA builds) is the one a GPU uses.
class StagingMemory {
 public:
  virtual ~StagingMemory() = default;

  // At least `bytes` of device memory, aligned for any scalar type, valid until the next grow().
  // Grows only: a call that needs no more than the current size allocates nothing. The contents
  // are not kept when it grows.
  virtual std::byte* grow(std::size_t bytes) = 0;
  // Copies between the host and memory grow() returned. Each returns when the copy is complete
  // and visible to the device communicator's next operation (to_device), or to the host (to_host).
  virtual void to_device(std::byte* device, const std::byte* host, std::size_t bytes) = 0;
  virtual void to_host(std::byte* host, const std::byte* device, std::size_t bytes) = 0;

  // Empty staging memory of the same kind and device, for a communicator split from this one's.
  virtual std::unique_ptr<StagingMemory> make_another() const = 0;
};

class StagedCommunicator final : public Communicator {
 public:
  // Stages over `device` without owning it: it must outlive this object (the backend's NCCL
  // communicator). Throws std::invalid_argument for null staging.
  StagedCommunicator(DeviceCommunicator& device, std::unique_ptr<StagingMemory> staging);
  // Owns `device` (what split() returns). Throws std::invalid_argument for a null argument.
  StagedCommunicator(std::unique_ptr<DeviceCommunicator> device, std::unique_ptr<StagingMemory> staging);

  int rank() const override { return device_.rank(); }
  int size() const override { return device_.size(); }
  const std::string& host() const override { return device_.host(); }

  // The device communicator's split, staged over new staging memory of the same kind (nullptr
  // stays nullptr).
  std::unique_ptr<Communicator> split(int color, int key) const override;
  int host_leader() const override { return device_.host_leader(); }

  // Throws std::invalid_argument, before any copy, when a span of counts does not have size()
  // entries.
  void alltoallv(const std::byte* send, std::span<const std::size_t> send_bytes, std::byte* recv,
                 std::span<const std::size_t> recv_bytes) override;
  void alltoall(const std::byte* send, std::byte* recv, std::size_t block_bytes) override;
  void allgather(const std::byte* send, std::byte* recv, std::size_t block_bytes) override;
  void allreduce(std::span<float> data, ReduceOp op) override;
  void allreduce(std::span<double> data, ReduceOp op) override;
  void allreduce(std::span<std::int64_t> data, ReduceOp op) override;
  // Moves no data: the device communicator's barrier as it is.
  void barrier() override { device_.barrier(); }

  // WaitMode is a member of each communicator type: the same mode, spelled for the device one.
  void set_wait_mode(WaitMode mode) override;
  void set_timeout(double seconds) override { device_.set_timeout(seconds); }
  void set_watchdog_action(WatchdogAction action) override { device_.set_watchdog_action(action); }
  void set_context(const OperationContext& context) override { device_.set_context(context); }

 private:
  template <class T>
  void reduce(std::span<T> data, ReduceOp op);

  std::unique_ptr<DeviceCommunicator> owned_;  // null when staging over a reference
  DeviceCommunicator& device_;
  std::unique_ptr<StagingMemory> staging_;
};

}  // namespace moe::comm
