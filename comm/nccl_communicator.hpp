// Communicator over NCCL on device memory (CUDA builds only, MOE_HAS_CUDA). Every pointer and
// span handed to it must be device memory of the CUDA device that was current at construction.
//
// Operations are enqueued on a CUDA stream the communicator owns and the calling thread waits for
// that stream before returning: the blocking semantics of Communicator hold exactly, so callers
// may read results (and reuse buffers) right after a call, as with MpiCommunicator.
//
// The watchdog, the NCCL way: the NCCL communicator is non-blocking (ncclConfig_t::blocking = 0),
// so no NCCL call waits for a peer on the host; after enqueuing, the calling thread polls
// ncclCommGetAsyncError and cudaStreamQuery (spinning 100 µs, then sleeping 20 µs between polls)
// until the work is done, NCCL reports an error, or the timeout passes. On expiry it calls
// ncclCommAbort (which stops the kernels), waits up to 10 s for the stream to drain, then does
// what the watchdog action says, with the same diagnostic as MpiCommunicator (NCCL cannot tell
// which peers are missing: it names the hosts of the ranks instead). An asynchronous NCCL error
// also aborts the NCCL communicator and throws CommError. Either way the communicator is
// poisoned afterwards. Should the stream not drain, device buffers might still be written, so the
// job is aborted even under throw_error.
#pragma once

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <memory>
#include <span>
#include <string>
#include <vector>

#include "comm/communicator.hpp"
#include "comm/mpi_communicator.hpp"
#include "comm/watchdog.hpp"

namespace moe::comm {

class NcclCommunicator final : public Communicator {
 public:
  // Collective over `mpi`: rank 0 of `mpi` creates the NCCL unique id and broadcasts it over MPI,
  // then every rank joins the NCCL communicator with its rank in `mpi`. Each rank uses the CUDA
  // device current when it calls (select it with cudaSetDevice first; two ranks may not share a
  // device). Throws CommError when CUDA, NCCL or MPI fails (on every rank when rank 0 cannot create
  // the id).
  explicit NcclCommunicator(MpiCommunicator& mpi);

  // Destroys the NCCL communicator (ncclCommFinalize then ncclCommDestroy; within the watchdog's
  // timeout when one is set, else ncclCommAbort), the stream and the scratch buffer.
  ~NcclCommunicator() override;

  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  // The NCCL communicator, for code that enqueues its own NCCL work.
  ncclComm_t native() const noexcept { return comm_; }
  // The stream every operation runs on.
  cudaStream_t stream() const noexcept { return stream_; }
  // The CUDA device the communicator was built on.
  int device() const noexcept { return device_; }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const std::string& host() const override { return host_; }

  // Collective (ncclCommSplit). A rank passing a negative color joins no group and gets nullptr.
  // The new communicator keeps the timeout and the watchdog action.
  std::unique_ptr<Communicator> split(int color, int key) const override;
  // NCCL has no shared-memory split: the lowest rank with the same host name (gathered at
  // creation), which is the same grouping on machines with distinct host names.
  int host_leader() const override;

  // Collective: grouped ncclSend/ncclRecv, one pair per peer with a non-empty block. Same
  // preconditions as MpiCommunicator::alltoallv; NCCL counts are size_t, so no size limit applies.
  // Throws std::invalid_argument when a span of counts does not have size() entries.
  void alltoallv(const std::byte* send, std::span<const std::size_t> send_bytes, std::byte* recv,
                 std::span<const std::size_t> recv_bytes) override;

  // Collective; `block_bytes` is the same on every rank.
  void alltoall(const std::byte* send, std::byte* recv, std::size_t block_bytes) override;

  // Collective (ncclAllGather); `block_bytes` is the same on every rank.
  void allgather(const std::byte* send, std::byte* recv, std::size_t block_bytes) override;

  // Collective (ncclAllReduce, in place on device memory).
  void allreduce(std::span<float> data, ReduceOp op) override;
  void allreduce(std::span<double> data, ReduceOp op) override;
  void allreduce(std::span<std::int64_t> data, ReduceOp op) override;

  // Collective: NCCL has no barrier, so this all-reduces one device integer and waits for it.
  void barrier() override;

  // The watchdog (see the top of this file); both are kept by split().
  void set_timeout(double seconds) override;
  void set_watchdog_action(WatchdogAction action) override { action_ = action; }
  void set_context(const OperationContext& context) override { context_ = context; }
  double timeout() const noexcept { return timeout_seconds_; }
  // True after the watchdog fired or NCCL failed asynchronously: every operation throws CommError.
  bool poisoned() const noexcept { return !poisoned_.empty(); }

 private:
  struct Adopt {};
  // Takes ownership of `comm` (from ncclCommSplit) on `device`.
  NcclCommunicator(Adopt, ncclComm_t comm, int device);
  void attach(ncclComm_t comm);

  void reduce_in_place(void* data, std::size_t count, ncclDataType_t type, ReduceOp op);
  // Gathers every rank's host name over NCCL (for the watchdog's diagnostic).
  void gather_hosts();
  // Throws CommError when the communicator is poisoned; `operation` names the refused call.
  void check_usable(const char* operation) const;
  // Waits until the enqueued work of `operation` is done, within the watchdog's deadline.
  void complete(const char* operation);
  // Aborts the NCCL communicator and waits (bounded) for the stream to drain; false if it did not.
  bool abort_nccl() noexcept;
  [[noreturn]] void watchdog_expired(const char* operation);

  double timeout_seconds_ = 0;
  WatchdogAction action_ = WatchdogAction::abort_job;
  OperationContext context_;
  std::string poisoned_;
  std::vector<std::string> peer_hosts_;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  int device_ = 0;
  int rank_ = 0;
  int size_ = 0;
  std::string host_;
  // One device int for barrier().
  std::int32_t* barrier_scratch_ = nullptr;
};

}  // namespace moe::comm
