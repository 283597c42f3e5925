#include "comm/mpi_communicator.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>

#include "comm/mpi_check.hpp"

namespace moe::comm {
namespace {

constexpr std::size_t int_max = static_cast<std::size_t>(INT_MAX);

MPI_Op to_mpi(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum: return MPI_SUM;
    case ReduceOp::max: return MPI_MAX;
    case ReduceOp::min: return MPI_MIN;
  }
  throw std::invalid_argument("moe::comm: unknown ReduceOp");
}

template <class T>
void allreduce_in_place(MPI_Comm comm, std::span<T> data, MPI_Datatype type, ReduceOp op) {
  const MPI_Op mpi_op = to_mpi(op);
  // Every rank holds the same length, so every rank makes the same number of calls.
  for (std::size_t begin = 0; begin < data.size(); begin += int_max) {
    const std::size_t count = std::min(int_max, data.size() - begin);
    MOE_CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, data.data() + begin, static_cast<int>(count), type,
                                mpi_op, comm));
  }
}

// Host name of every rank of `comm` (names cut to 63 bytes), so that a diagnostic can name the
// host of a peer that has gone silent: by then that peer can no longer be asked.
std::vector<std::string> gather_hosts(MPI_Comm comm, int size, const std::string& own_host) {
  constexpr int width = 64;
  std::array<char, width> own{};
  own_host.copy(own.data(), width - 1);
  std::vector<char> all(static_cast<std::size_t>(width) * static_cast<std::size_t>(size));
  MOE_CHECK_MPI(MPI_Allgather(own.data(), width, MPI_CHAR, all.data(), width, MPI_CHAR, comm));
  std::vector<std::string> hosts;
  hosts.reserve(static_cast<std::size_t>(size));
  for (std::size_t r = 0; r < static_cast<std::size_t>(size); ++r) {
    hosts.emplace_back(all.data() + r * width);
  }
  return hosts;
}

void copy_bytes(std::byte* to, const std::byte* from, std::size_t bytes) {
  // memcpy with a null pointer is undefined even for zero bytes, and empty blocks are common.
  if (bytes > 0) std::memcpy(to, from, bytes);
}

}  // namespace

MpiCommunicator::MpiCommunicator(MPI_Comm comm, std::size_t max_message_bytes)
    : max_message_bytes_(max_message_bytes) {
  if (max_message_bytes == 0 || max_message_bytes > int_max) {
    throw std::invalid_argument("MpiCommunicator: max_message_bytes must be in 1..INT_MAX, got " +
                                std::to_string(max_message_bytes));
  }
  MPI_Comm dup = MPI_COMM_NULL;
  MOE_CHECK_MPI(MPI_Comm_dup(comm, &dup));
  attach(dup);
}

MpiCommunicator::MpiCommunicator(Adopt, MPI_Comm comm, std::size_t max_message_bytes)
    : max_message_bytes_(max_message_bytes) {
  attach(comm);
}

void MpiCommunicator::attach(MPI_Comm comm) {
  // Owned from here on: a constructor that throws runs no destructor, so free it on failure.
  try {
    MOE_CHECK_MPI(MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN));
    MOE_CHECK_MPI(MPI_Comm_rank(comm, &rank_));
    MOE_CHECK_MPI(MPI_Comm_size(comm, &size_));
    host_ = this_host_name();
    peer_hosts_ = gather_hosts(comm, size_, host_);
    const auto n = static_cast<std::size_t>(size_);
    send_offsets_.resize(n);
    recv_offsets_.resize(n);
    uniform_bytes_.resize(n);
    mpi_send_counts_.resize(n);
    mpi_send_displs_.resize(n);
    mpi_recv_counts_.resize(n);
    mpi_recv_displs_.resize(n);
  } catch (...) {
    MPI_Comm_free(&comm);
    throw;
  }
  comm_ = comm;
}

std::unique_ptr<MpiCommunicator> MpiCommunicator::world(std::size_t max_message_bytes) {
  return std::make_unique<MpiCommunicator>(MPI_COMM_WORLD, max_message_bytes);
}

MpiCommunicator::~MpiCommunicator() {
  // A poisoned communicator keeps its MPI communicator: freeing is collective, and abandoned
  // requests still refer to it.
  if (comm_ == MPI_COMM_NULL || poisoned()) return;
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized == 0) MPI_Comm_free(&comm_);
}

std::unique_ptr<Communicator> MpiCommunicator::split(int color, int key) const {
  return split_mpi(color, key);
}

std::unique_ptr<MpiCommunicator> MpiCommunicator::split_mpi(int color, int key) const {
  check_usable("split");
  MPI_Comm part = MPI_COMM_NULL;
  MOE_CHECK_MPI(MPI_Comm_split(comm_, color, key, &part));
  if (part == MPI_COMM_NULL) return nullptr;
  std::unique_ptr<MpiCommunicator> child(new MpiCommunicator(Adopt{}, part, max_message_bytes_));
  child->timeout_seconds_ = timeout_seconds_;
  child->action_ = action_;
  return child;
}

int MpiCommunicator::host_leader() const {
  check_usable("host_leader");
  MPI_Comm shared = MPI_COMM_NULL;
  MOE_CHECK_MPI(MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &shared));
  int leader = rank_;
  try {
    MOE_CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, &leader, 1, MPI_INT, MPI_MIN, shared));
  } catch (...) {
    MPI_Comm_free(&shared);
    throw;
  }
  MPI_Comm_free(&shared);
  return leader;
}

bool MpiCommunicator::any_rank(bool local) {
  int flag = local ? 1 : 0;
  if (wait_mode_ == WaitMode::spin && timeout_seconds_ <= 0) {
    MOE_CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, &flag, 1, MPI_INT, MPI_MAX, comm_));
  } else {
    MPI_Request request = MPI_REQUEST_NULL;
    MOE_CHECK_MPI(MPI_Iallreduce(MPI_IN_PLACE, &flag, 1, MPI_INT, MPI_MAX, comm_, &request));
    wait(request, "MPI_Iallreduce (alltoallv path agreement)");
  }
  return flag != 0;
}

// How a thread in sleep mode waits between two polls of an exchange: poll without pause for the
// first 100 µs (a peer that is nearly there, or data in flight, needs this thread now), then sleep
// 20 µs at a time, leaving the core to the computation the exchange is overlapped with. Not
// sched_yield: on Linux a yielding thread may wait a whole time slice (ms) before it runs again,
// and every step of the exchange's handshake would pay that.
void MpiCommunicator::idle(std::chrono::steady_clock::time_point waiting_since) {
  if (std::chrono::steady_clock::now() - waiting_since < std::chrono::microseconds(100)) return;
  std::this_thread::sleep_for(std::chrono::microseconds(20));
}

void MpiCommunicator::set_timeout(double seconds) {
  if (!(seconds >= 0)) {
    throw std::invalid_argument("MpiCommunicator::set_timeout: seconds must be >= 0, got " +
                                std::to_string(seconds));
  }
  timeout_seconds_ = seconds;
}

std::byte* MpiCommunicator::Staging::reserve(std::size_t bytes) {
  if (bytes > capacity_) {
    data_ = std::make_unique_for_overwrite<std::byte[]>(bytes);
    capacity_ = bytes;
  }
  return data_.get();
}

void MpiCommunicator::Staging::abandon() noexcept {
  // Never freed: MPI may still write a late message here, or read a pending send. Kept reachable
  // (so leak checkers do not report it) in a list that is itself never destroyed, since MPI may
  // still be running while static objects are torn down at exit.
  static std::mutex mutex;
  static auto* kept = new std::vector<std::unique_ptr<std::byte[]>>();
  if (data_ != nullptr) {
    std::lock_guard lock(mutex);
    try {
      kept->push_back(std::move(data_));
    } catch (...) {
      static_cast<void>(data_.release());  // no memory for the list: leak it outright
    }
  }
  data_ = nullptr;
  capacity_ = 0;
}

void MpiCommunicator::check_usable(const char* operation) const {
  if (poisoned_.empty()) return;
  throw CommError(std::string("moe-ep: ") + operation +
                      " refused: this communicator is unusable after a watchdog timeout (" +
                      poisoned_ +
                      "); end the job (MPI_Abort) instead of using it or MPI_Finalize",
                  this_world_rank(), host_);
}

WatchdogReport MpiCommunicator::report(const char* operation) const {
  return make_watchdog_report(operation, timeout_seconds_, rank_, size_, this_world_rank(), host_, context_);
}

void MpiCommunicator::watchdog_expired(WatchdogReport report, int num_requests, int num_receives) {
  if (action_ == WatchdogAction::throw_error) {
    // Receives not yet matched are withdrawn; a send cannot be (MPI_Cancel of sends is deprecated,
    // and OpenMPI's ob1 ignores it). Freed requests complete, or not, inside MPI; either way they
    // only touch the staging memory abandoned below, never the caller's buffers.
    for (int i = 0; i < num_requests; ++i) {
      MPI_Request& request = requests_[static_cast<std::size_t>(i)];
      if (request == MPI_REQUEST_NULL) continue;
      if (i < num_receives) MPI_Cancel(&request);
      MPI_Request_free(&request);
    }
    send_stage_.abandon();
    recv_stage_.abandon();
    poisoned_ = watchdog_message(report, action_);
  }
  watchdog_fire(report, action_);
}

void MpiCommunicator::wait(MPI_Request& request, const char* operation) {
  if (wait_mode_ == WaitMode::spin && timeout_seconds_ <= 0) {
    MOE_CHECK_MPI(MPI_Wait(&request, MPI_STATUS_IGNORE));
    return;
  }
  // MPI_Test also drives the exchange's progress.
  const WatchdogDeadline deadline(timeout_seconds_);
  const bool done = poll_until(
      deadline,
      [&] {
        int flag = 0;
        MOE_CHECK_MPI(MPI_Test(&request, &flag, MPI_STATUS_IGNORE));
        return flag != 0;
      },
      [&] {
        if (wait_mode_ == WaitMode::sleep) idle(deadline.start());
      });
  if (done) return;
  // A non-blocking collective can be neither cancelled nor freed: the request stays with MPI,
  // working on staging memory under throw_error.
  request = MPI_REQUEST_NULL;
  WatchdogReport r = report(operation);
  r.peers = "a collective does not say which peers have joined; its ranks are on " + comm::ranks_by_host(peer_hosts_);
  watchdog_expired(std::move(r), 0, 0);
}

void MpiCommunicator::alltoallv(const std::byte* send, std::span<const std::size_t> send_bytes,
                                std::byte* recv, std::span<const std::size_t> recv_bytes) {
  check_usable("alltoallv");
  const auto n = static_cast<std::size_t>(size_);
  if (send_bytes.size() != n || recv_bytes.size() != n) {
    throw std::invalid_argument("MpiCommunicator::alltoallv: " + std::to_string(send_bytes.size()) +
                                " send and " + std::to_string(recv_bytes.size()) +
                                " receive counts for a communicator of size " +
                                std::to_string(size_));
  }
  const auto self = static_cast<std::size_t>(rank_);
  if (send_bytes[self] != recv_bytes[self]) {
    throw std::invalid_argument("MpiCommunicator::alltoallv: rank " + std::to_string(rank_) +
                                " sends " + std::to_string(send_bytes[self]) +
                                " bytes to itself but expects " + std::to_string(recv_bytes[self]));
  }
  bool fits = true;
  std::size_t send_end = 0;
  std::size_t recv_end = 0;
  for (std::size_t p = 0; p < n; ++p) {
    send_offsets_[p] = send_end;
    recv_offsets_[p] = recv_end;
    fits = fits && send_end <= int_max && recv_end <= int_max &&
           send_bytes[p] <= max_message_bytes_ && recv_bytes[p] <= max_message_bytes_;
    send_end += send_bytes[p];
    recv_end += recv_bytes[p];
  }
  if (size_ == 1) {
    copy_bytes(recv, send, send_bytes[0]);
    return;
  }
  if (timeout_seconds_ > 0 || any_rank(!fits)) {
    pairwise_exchange(send, send_bytes, send_offsets_, recv, recv_bytes, recv_offsets_);
    return;
  }
  for (std::size_t p = 0; p < n; ++p) {
    mpi_send_counts_[p] = static_cast<int>(send_bytes[p]);
    mpi_send_displs_[p] = static_cast<int>(send_offsets_[p]);
    mpi_recv_counts_[p] = static_cast<int>(recv_bytes[p]);
    mpi_recv_displs_[p] = static_cast<int>(recv_offsets_[p]);
  }
  if (wait_mode_ == WaitMode::spin) {
    MOE_CHECK_MPI(MPI_Alltoallv(send, mpi_send_counts_.data(), mpi_send_displs_.data(), MPI_BYTE,
                                recv, mpi_recv_counts_.data(), mpi_recv_displs_.data(), MPI_BYTE,
                                comm_));
    return;
  }
  MPI_Request request = MPI_REQUEST_NULL;
  MOE_CHECK_MPI(MPI_Ialltoallv(send, mpi_send_counts_.data(), mpi_send_displs_.data(), MPI_BYTE,
                               recv, mpi_recv_counts_.data(), mpi_recv_displs_.data(), MPI_BYTE,
                               comm_, &request));
  wait(request, "MPI_Ialltoallv");
}

void MpiCommunicator::alltoall(const std::byte* send, std::byte* recv, std::size_t block_bytes) {
  check_usable("alltoall");
  // block_bytes is the same everywhere, so every rank takes the same path without agreeing.
  if (block_bytes <= max_message_bytes_ && timeout_seconds_ <= 0) {
    MOE_CHECK_MPI(MPI_Alltoall(send, static_cast<int>(block_bytes), MPI_BYTE, recv,
                               static_cast<int>(block_bytes), MPI_BYTE, comm_));
    return;
  }
  for (std::size_t p = 0; p < uniform_bytes_.size(); ++p) {
    uniform_bytes_[p] = block_bytes;
    send_offsets_[p] = p * block_bytes;
    recv_offsets_[p] = p * block_bytes;
  }
  pairwise_exchange(send, uniform_bytes_, send_offsets_, recv, uniform_bytes_, recv_offsets_);
}

void MpiCommunicator::allgather(const std::byte* send, std::byte* recv, std::size_t block_bytes) {
  check_usable("allgather");
  if (block_bytes <= max_message_bytes_ && timeout_seconds_ <= 0) {
    MOE_CHECK_MPI(MPI_Allgather(send, static_cast<int>(block_bytes), MPI_BYTE, recv,
                                static_cast<int>(block_bytes), MPI_BYTE, comm_));
    return;
  }
  // An all-gather is an all-to-all whose send blocks are all the same block.
  for (std::size_t p = 0; p < uniform_bytes_.size(); ++p) {
    uniform_bytes_[p] = block_bytes;
    send_offsets_[p] = 0;
    recv_offsets_[p] = p * block_bytes;
  }
  pairwise_exchange(send, uniform_bytes_, send_offsets_, recv, uniform_bytes_, recv_offsets_);
}

void MpiCommunicator::pairwise_exchange(const std::byte* send,
                                        std::span<const std::size_t> send_bytes,
                                        std::span<const std::size_t> send_offsets,
                                        std::byte* recv, std::span<const std::size_t> recv_bytes,
                                        std::span<const std::size_t> recv_offsets) {
  const auto self = static_cast<std::size_t>(rank_);
  // One deadline for the whole exchange, not one per window: the watchdog bounds the operation.
  const WatchdogDeadline deadline(timeout_seconds_);
  bool self_copied = false;
  auto copy_self_block = [&] {
    copy_bytes(recv + recv_offsets[self], send + send_offsets[self], send_bytes[self]);
    self_copied = true;
  };
  // Step s pairs every rank with the ranks s ahead (send) and s behind (receive), so each rank
  // talks to one peer per direction at a time and no peer is flooded by everyone at once.
  for (int step = 1; step < size_; ++step) {
    const int dst = (rank_ + step) % size_;
    const int src = (rank_ - step + size_) % size_;
    const auto dst_idx = static_cast<std::size_t>(dst);
    const auto src_idx = static_cast<std::size_t>(src);
    const std::byte* send_block = send + send_offsets[dst_idx];
    std::byte* recv_block = recv + recv_offsets[src_idx];
    const std::size_t send_total = send_bytes[dst_idx];
    const std::size_t recv_total = recv_bytes[src_idx];
    std::size_t sent = 0;
    std::size_t received = 0;
    // Both partners cut a block into the same chunks and walk the same windows: window w of the
    // sender holds exactly the chunks window w of the receiver posts, so waiting never deadlocks.
    while (sent < send_total || received < recv_total) {
      // This window's bytes each way: at most window_messages messages per direction.
      const std::size_t recv_window =
          std::min(recv_total - received, window_messages * max_message_bytes_);
      const std::size_t send_window =
          std::min(send_total - sent, window_messages * max_message_bytes_);
      // Staged (see set_watchdog_action): MPI sees only this communicator's memory.
      std::byte* recv_at = staged() ? recv_stage_.reserve(recv_window) : recv_block + received;
      const std::byte* send_at = send_block + sent;
      if (staged()) {
        std::byte* stage = send_stage_.reserve(send_window);
        copy_bytes(stage, send_at, send_window);
        send_at = stage;
      }
      int num_requests = 0;
      for (std::size_t at = 0; at < recv_window; at += max_message_bytes_) {
        const std::size_t bytes = std::min(max_message_bytes_, recv_window - at);
        MOE_CHECK_MPI(MPI_Irecv(recv_at + at, static_cast<int>(bytes), MPI_BYTE, src,
                                exchange_tag, comm_, &requests_[static_cast<std::size_t>(num_requests)]));
        ++num_requests;
      }
      const int num_receives = num_requests;
      for (std::size_t at = 0; at < send_window; at += max_message_bytes_) {
        const std::size_t bytes = std::min(max_message_bytes_, send_window - at);
        MOE_CHECK_MPI(MPI_Isend(send_at + at, static_cast<int>(bytes), MPI_BYTE, dst,
                                exchange_tag, comm_, &requests_[static_cast<std::size_t>(num_requests)]));
        ++num_requests;
      }
      // The local block is copied while the first messages are in flight.
      if (!self_copied) copy_self_block();
      wait_window(num_requests, num_receives, src, step, deadline);
      if (staged()) copy_bytes(recv_block + received, recv_at, recv_window);
      received += recv_window;
      sent += send_window;
    }
  }
  if (!self_copied) copy_self_block();
}

void MpiCommunicator::wait_window(int num_requests, int num_receives, int src, int step,
                                  const WatchdogDeadline& deadline) {
  if (timeout_seconds_ > 0 || wait_mode_ == WaitMode::sleep) {
    const auto window_start = std::chrono::steady_clock::now();
    const bool done = poll_until(
        deadline,
        [&] {
          int flag = 0;
          const int code = MPI_Testall(num_requests, requests_.data(), &flag, statuses_.data());
          if (code != MPI_SUCCESS) {
            detail::throw_mpi_error(code, "MPI_Testall(pairwise exchange window)", __FILE__, __LINE__);
          }
          return flag != 0;
        },
        [&] {
          if (wait_mode_ == WaitMode::sleep) idle(window_start);
        });
    if (done) return;
    // This step waits on `src`; the steps after it (their sources) have not started.
    // Each rank with its host: a silent peer is often a host that died or was cut off.
    auto rank_on_host = [this](int r) {
      return std::to_string(r) + " (host " + peer_hosts_[static_cast<std::size_t>(r)] + ")";
    };
    WatchdogReport r = report("the pairwise exchange");
    r.silent_ranks.push_back(src);
    r.peers = "no data yet from rank " + rank_on_host(src);
    if (step + 1 < size_) {
      r.peers += "; ranks not reached yet:";
      for (int later = step + 1; later < size_; ++later) {
        const int peer = (rank_ - later + size_) % size_;
        r.silent_ranks.push_back(peer);
        r.peers += ' ';
        r.peers += rank_on_host(peer);
      }
    }
    watchdog_expired(std::move(r), num_requests, num_receives);
  }
  const int code = MPI_Waitall(num_requests, requests_.data(), statuses_.data());
  if (code == MPI_ERR_IN_STATUS) {
    // Report the failed message's own error rather than the generic "error in status".
    for (int i = 0; i < num_requests; ++i) {
      const int status_code = statuses_[static_cast<std::size_t>(i)].MPI_ERROR;
      if (status_code != MPI_SUCCESS && status_code != MPI_ERR_PENDING) {
        detail::throw_mpi_error(status_code, "MPI_Waitall(pairwise exchange window)", __FILE__,
                                __LINE__);
      }
    }
  }
  if (code != MPI_SUCCESS) {
    detail::throw_mpi_error(code, "MPI_Waitall(pairwise exchange window)", __FILE__, __LINE__);
  }
}

void MpiCommunicator::allreduce(std::span<float> data, ReduceOp op) {
  check_usable("allreduce");
  if (timeout_seconds_ > 0) return watched_allreduce(data.data(), data.size(), MPI_FLOAT, op);
  allreduce_in_place(comm_, data, MPI_FLOAT, op);
}

void MpiCommunicator::allreduce(std::span<double> data, ReduceOp op) {
  check_usable("allreduce");
  if (timeout_seconds_ > 0) return watched_allreduce(data.data(), data.size(), MPI_DOUBLE, op);
  allreduce_in_place(comm_, data, MPI_DOUBLE, op);
}

void MpiCommunicator::watched_allreduce(void* data, std::size_t count, MPI_Datatype type, ReduceOp op) {
  if (count == 0) return;
  if (count > int_max) {
    throw std::invalid_argument("MpiCommunicator::allreduce: " + std::to_string(count) +
                                " elements is more than one watched reduction carries (INT_MAX)");
  }
  void* at = data;
  std::size_t bytes = 0;
  if (staged()) {
    int type_bytes = 0;
    MOE_CHECK_MPI(MPI_Type_size(type, &type_bytes));
    bytes = count * static_cast<std::size_t>(type_bytes);
    at = recv_stage_.reserve(bytes);
    copy_bytes(static_cast<std::byte*>(at), static_cast<const std::byte*>(data), bytes);
  }
  MPI_Request request = MPI_REQUEST_NULL;
  MOE_CHECK_MPI(MPI_Iallreduce(MPI_IN_PLACE, at, static_cast<int>(count), type, to_mpi(op), comm_, &request));
  wait(request, "MPI_Iallreduce");
  if (staged()) copy_bytes(static_cast<std::byte*>(data), static_cast<const std::byte*>(at), bytes);
}

void MpiCommunicator::allreduce(std::span<std::int64_t> data, ReduceOp op) {
  check_usable("allreduce");
  if (timeout_seconds_ > 0) return watched_allreduce(data.data(), data.size(), MPI_INT64_T, op);
  allreduce_in_place(comm_, data, MPI_INT64_T, op);
}

void MpiCommunicator::barrier() {
  check_usable("barrier");
  if (timeout_seconds_ <= 0) {
    MOE_CHECK_MPI(MPI_Barrier(comm_));
    return;
  }
  MPI_Request request = MPI_REQUEST_NULL;
  MOE_CHECK_MPI(MPI_Ibarrier(comm_, &request));
  wait(request, "MPI_Ibarrier");
}

}  // namespace moe::comm
