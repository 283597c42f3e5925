// Communicator over MPI. Owns a duplicate of the MPI communicator it is built from, so its
// traffic never matches messages of other code on the same ranks, and sets MPI_ERRORS_RETURN on
// it so that every failure becomes a CommError (see comm/mpi_check.hpp) instead of an abort.
//
// One object is used by one thread at a time (it keeps per-call scratch arrays as members);
// different objects may be used from different threads when MPI provides MPI_THREAD_MULTIPLE.
#pragma once

#include <mpi.h>

#include <array>
#include <chrono>
#include <climits>
#include <cstddef>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "comm/communicator.hpp"
#include "comm/watchdog.hpp"

namespace moe::comm {

class MpiCommunicator final : public Communicator {
 public:
  // MPI counts are int: no single message can be larger.
  static constexpr std::size_t default_max_message_bytes = INT_MAX;

  // Collective over `comm`: duplicates it (MPI_Comm_dup) and owns the duplicate, and gathers the
  // host name of every rank (one MPI_Allgather, so the watchdog can name a silent peer's host).
  // `max_message_bytes` (1 ... INT_MAX, the same on every rank) is the largest message one
  // point-to-point call may carry; an exchange with a larger per-peer block, or with offsets
  // beyond INT_MAX, takes the chunked point-to-point path instead of one MPI collective. Tests
  // lower it to force that path with small buffers. Throws std::invalid_argument when it is out of
  // range, CommError when MPI fails.
  explicit MpiCommunicator(MPI_Comm comm,
                           std::size_t max_message_bytes = default_max_message_bytes);

  // Collective over MPI_COMM_WORLD: a communicator over all ranks of the job.
  static std::unique_ptr<MpiCommunicator> world(
      std::size_t max_message_bytes = default_max_message_bytes);

  // Frees the owned MPI communicator (skipped when MPI is already finalised).
  ~MpiCommunicator() override;

  MpiCommunicator(const MpiCommunicator&) = delete;
  MpiCommunicator& operator=(const MpiCommunicator&) = delete;

  // The owned MPI communicator, for code that must call MPI directly. Point-to-point traffic of
  // the caller on it must not use the tag `exchange_tag`.
  MPI_Comm native() const noexcept { return comm_; }

  // The largest message of one point-to-point call (see the constructor).
  std::size_t max_message_bytes() const noexcept { return max_message_bytes_; }

  // Tag of the point-to-point messages of the chunked exchange path.
  static constexpr int exchange_tag = 7261;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const std::string& host() const override { return host_; }

  // Collective (MPI_Comm_split). `color` must be >= 0, or MPI_UNDEFINED for a rank that joins no
  // group: that rank gets nullptr. The new communicator keeps max_message_bytes(), the timeout
  // and the watchdog action.
  std::unique_ptr<Communicator> split(int color, int key) const override;
  int host_leader() const override;

  // split() with the concrete type, for callers that need native() of the result.
  std::unique_ptr<MpiCommunicator> split_mpi(int color, int key) const;

  // Collective. Preconditions (as for MPI_Alltoallv): recv_bytes[q] on rank p equals
  // send_bytes[p] on rank q, and recv_bytes[rank()] == send_bytes[rank()]. One MPI_Alltoallv when
  // on every rank all blocks fit max_message_bytes() and all offsets fit int; otherwise, on every
  // rank, a pairwise exchange split into messages of at most max_message_bytes(). The ranks agree
  // on the path with a one-integer all-reduce, because offsets are known only locally.
  // Throws std::invalid_argument when a span of counts does not have size() entries.
  void alltoallv(const std::byte* send, std::span<const std::size_t> send_bytes, std::byte* recv,
                 std::span<const std::size_t> recv_bytes) override;

  // Collective; `block_bytes` is the same on every rank.
  void alltoall(const std::byte* send, std::byte* recv, std::size_t block_bytes) override;

  // Collective; `block_bytes` is the same on every rank.
  void allgather(const std::byte* send, std::byte* recv, std::size_t block_bytes) override;

  // Collective; the span has the same length on every rank (any length: split into calls of at
  // most INT_MAX elements).
  void allreduce(std::span<float> data, ReduceOp op) override;
  void allreduce(std::span<double> data, ReduceOp op) override;
  void allreduce(std::span<std::int64_t> data, ReduceOp op) override;

  // Collective (MPI_Barrier).
  void barrier() override;
  // In `sleep` mode alltoallv uses MPI_Ialltoallv (and MPI_Iallreduce for its path agreement) and
  // waits by testing, for 100 µs without pause, then with sleeps of 20 µs.
  void set_wait_mode(WaitMode mode) override { wait_mode_ = mode; }
  // With a timeout every exchange (alltoallv, alltoall, allgather) takes the pairwise
  // point-to-point path, so that on expiry the diagnostic can name the ranks whose data has not
  // arrived; reductions and barriers become non-blocking calls polled against the deadline.
  void set_timeout(double seconds) override;
  // With a timeout and throw_error, the pairwise exchange sends from and receives into staging
  // buffers of this communicator (one window of messages at a time, copied in and out) and a
  // reduction works on a staged copy of its data: on expiry MPI keeps those (they are never freed)
  // and never touches the caller's memory again. That costs one extra copy of every byte moved
  // (and staging memory of up to one peer's block each way); abort_job works in place. On expiry
  // the exchange's pending receives are cancelled (MPI_Cancel) and its requests freed; a pending
  // collective (MPI_Iallreduce, MPI_Ibarrier) can be neither, and is left to MPI. A poisoned
  // communicator's destructor does not call MPI_Comm_free (collective, and requests still
  // refer to it).
  void set_watchdog_action(WatchdogAction action) override { action_ = action; }
  WatchdogAction watchdog_action() const noexcept { return action_; }
  // Exit code of a job the watchdog aborts.
  static constexpr int watchdog_exit_code = comm::watchdog_exit_code;
  void set_context(const OperationContext& context) override { context_ = context; }
  double timeout() const noexcept { return timeout_seconds_; }
  // True after a WatchdogTimeout: every operation throws CommError.
  bool poisoned() const noexcept { return !poisoned_.empty(); }

 private:
  struct Adopt {};
  // Takes ownership of `comm` without duplicating it (used by split_mpi).
  MpiCommunicator(Adopt, MPI_Comm comm, std::size_t max_message_bytes);
  void attach(MPI_Comm comm);

  // Memory MPI works on instead of the caller's (see set_watchdog_action). Grows, never shrinks;
  // abandon() hands it to MPI for good (leaked on purpose: a late message may still land there).
  class Staging {
   public:
    std::byte* reserve(std::size_t bytes);
    void abandon() noexcept;

   private:
    std::unique_ptr<std::byte[]> data_;
    std::size_t capacity_ = 0;
  };

  // Throws CommError when the communicator is poisoned; `operation` names the refused call.
  void check_usable(const char* operation) const;
  // True when the watched operations must keep MPI away from the caller's buffers.
  bool staged() const noexcept {
    return timeout_seconds_ > 0 && action_ == WatchdogAction::throw_error;
  }
  // True on every rank when any rank passes true.
  bool any_rank(bool local);
  // Completes `request` as the wait mode says, within the watchdog's deadline.
  void wait(MPI_Request& request, const char* operation);
  // The watchdog's report of `operation` with this rank's context (peers left to the caller).
  WatchdogReport report(const char* operation) const;
  // The watchdog fired: under abort_job prints and aborts the job; under throw_error gives up the
  // first `num_requests` of requests_ (the first `num_receives` of them receives), hands the
  // staging memory to MPI, poisons the communicator and throws WatchdogTimeout.
  [[noreturn]] void watchdog_expired(WatchdogReport report, int num_requests, int num_receives);
  void watched_allreduce(void* data, std::size_t count, MPI_Datatype type, ReduceOp op);
  static void idle(std::chrono::steady_clock::time_point waiting_since);
  WaitMode wait_mode_ = WaitMode::spin;
  double timeout_seconds_ = 0;
  WatchdogAction action_ = WatchdogAction::abort_job;
  OperationContext context_;
  // Why the communicator may not be used (the watchdog's message); empty while it may.
  std::string poisoned_;
  Staging send_stage_;
  Staging recv_stage_;

  // Pairwise point-to-point exchange: block p of `send` (send_bytes[p] bytes at send_offsets[p])
  // goes to rank p, block q of `recv` (at recv_offsets[q]) comes from rank q, in messages of at
  // most max_message_bytes_.
  void pairwise_exchange(const std::byte* send, std::span<const std::size_t> send_bytes,
                         std::span<const std::size_t> send_offsets, std::byte* recv,
                         std::span<const std::size_t> recv_bytes,
                         std::span<const std::size_t> recv_offsets);
  // Completes the window's requests (the first `num_receives` of them receives) within the
  // exchange's `deadline`; `src` is the peer this step receives from and `step` the pairwise step
  // (for the watchdog's account of which peers have not been heard from).
  void wait_window(int num_requests, int num_receives, int src, int step,
                   const WatchdogDeadline& deadline);

  // At most this many messages per direction are in flight in pairwise_exchange: bounded, so the
  // request arrays are members and the hot path never allocates.
  static constexpr int window_messages = 16;

  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0;
  int size_ = 0;
  std::string host_;
  // Host of each rank of this communicator (gathered at construction), for the watchdog.
  std::vector<std::string> peer_hosts_;
  std::size_t max_message_bytes_;

  // Per-call scratch, sized size() once at construction.
  std::vector<std::size_t> send_offsets_;
  std::vector<std::size_t> recv_offsets_;
  std::vector<std::size_t> uniform_bytes_;
  std::vector<int> mpi_send_counts_;
  std::vector<int> mpi_send_displs_;
  std::vector<int> mpi_recv_counts_;
  std::vector<int> mpi_recv_displs_;
  std::array<MPI_Request, 2 * window_messages> requests_{};
  std::array<MPI_Status, 2 * window_messages> statuses_{};
};

}  // namespace moe::comm
