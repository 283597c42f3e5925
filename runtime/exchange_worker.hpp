// Runs a layer's all-to-all exchanges on a thread of their own, in the order they are posted, so
// that the exchange of one chunk progresses while the calling thread computes another, whether or
// not the computing thread ever enters MPI.
//
// MPI sees calls from two threads but never from both at once: the layer posts exchanges only
// after its own last collective of the phase and waits for all of them before its next one. That
// is what MPI_THREAD_SERIALIZED permits (MpiEnvironment asks for MPI_THREAD_MULTIPLE).
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <mutex>
#include <span>
#include <thread>
#include <vector>

#include "comm/communicator.hpp"

namespace moe {

class ExchangeWorker {
 public:
  // One Communicator::alltoallv. The pointed-to buffers and count arrays must stay valid until the
  // task's wait() returns.
  struct Task {
    const std::byte* send = nullptr;
    std::span<const std::size_t> send_bytes;
    std::byte* recv = nullptr;
    std::span<const std::size_t> recv_bytes;
    comm::OperationContext context;  // for the watchdog's diagnostic; its phase names the trace event
    int chunk = -1;                  // the pipeline chunk, for the trace
  };

  explicit ExchangeWorker(comm::Communicator& comm);
  ~ExchangeWorker();
  ExchangeWorker(const ExchangeWorker&) = delete;
  ExchangeWorker& operator=(const ExchangeWorker&) = delete;

  // Makes room for `tasks` outstanding tasks. Call with nothing outstanding; allocates only when
  // the capacity grows.
  void reserve(std::size_t tasks);
  // Queues a task; returns its ticket.
  std::uint64_t post(const Task& task);
  // Blocks (without spinning) until the task is done; rethrows the error of a failed task.
  void wait(std::uint64_t ticket);
  // Wall time spent inside exchanges since the last call (overlapped with compute or not).
  double take_busy_seconds();

 private:
  void run();

  comm::Communicator& comm_;
  std::mutex mutex_;
  std::condition_variable posted_cv_, done_cv_;
  std::vector<Task> ring_;
  std::uint64_t posted_ = 0;
  std::uint64_t done_ = 0;
  bool stop_ = false;
  std::exception_ptr error_;
  double busy_seconds_ = 0;
  std::thread thread_;  // last: starts after everything it reads is constructed
};

}  // namespace moe
