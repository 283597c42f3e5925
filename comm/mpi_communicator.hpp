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
  // group: that rank gets nullptr. The new communicator keeps max_message_bytes().
  std::unique_ptr<Communicator> split(int color, int key) const override;

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
  // Exit code of a job the watchdog aborts.
  static constexpr int watchdog_exit_code = 124;
  void set_context(const OperationContext& context) override { context_ = context; }
  double timeout() const noexcept { return timeout_seconds_; }

 private:
  struct Adopt {};
  // Takes ownership of `comm` without duplicating it (used by split_mpi).
  MpiCommunicator(Adopt, MPI_Comm comm, std::size_t max_message_bytes);
  void attach(MPI_Comm comm);

  // True on every rank when any rank passes true.
  bool any_rank(bool local);
  // Completes `request` as the wait mode says, within the watchdog's deadline.
  void wait(MPI_Request& request, const char* operation);
  // Prints the watchdog's diagnostic and aborts the job.
  [[noreturn]] void watchdog_expired(const char* operation, const std::string& peers) const;
  // The hosts of this communicator's ranks, as runs of consecutive ranks (for the watchdog).
  std::string ranks_by_host() const;
  void watched_allreduce(void* data, std::size_t count, MPI_Datatype type, ReduceOp op);
  static void idle(std::chrono::steady_clock::time_point waiting_since);
  WaitMode wait_mode_ = WaitMode::spin;
  double timeout_seconds_ = 0;
  OperationContext context_;

  // Pairwise point-to-point exchange: block p of `send` (send_bytes[p] bytes at send_offsets[p])
  // goes to rank p, block q of `recv` (at recv_offsets[q]) comes from rank q, in messages of at
  // most max_message_bytes_.
  void pairwise_exchange(const std::byte* send, std::span<const std::size_t> send_bytes,
                         std::span<const std::size_t> send_offsets, std::byte* recv,
                         std::span<const std::size_t> recv_bytes,
                         std::span<const std::size_t> recv_offsets);
  // Posted requests of one window of pairwise_exchange, then waits for all of them.
  // Completes the window's requests; `src` is the peer this step receives from and `step` the
  // pairwise step (for the watchdog's account of which peers have not been heard from).
  void wait_window(int num_requests, int src, int step);

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
