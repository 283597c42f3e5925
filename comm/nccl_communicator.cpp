#include "comm/nccl_communicator.hpp"

#include <mpi.h>

#include <array>
#include <chrono>
#include <stdexcept>
#include <string>
#include <thread>

#include "comm/device_scope.hpp"
#include "comm/mpi_check.hpp"
#include "comm/nccl_check.hpp"
#include "comm/nccl_wait_state.hpp"

namespace moe::comm {
namespace {

using detail::DeviceScope;

ncclRedOp_t to_nccl(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum: return ncclSum;
    case ReduceOp::max: return ncclMax;
    case ReduceOp::min: return ncclMin;
  }
  throw std::invalid_argument("moe::comm: unknown ReduceOp");
}

using Clock = std::chrono::steady_clock;

// How long the stream may take to drain after ncclCommAbort before the job is aborted instead.
constexpr double drain_seconds = 10;

// Between two polls of a wait: none for the first 100 µs (the GPU is usually nearly done), then
// 20 µs sleeps, so a long wait does not take a core from the host's work.
void pause_polling(Clock::time_point waiting_since) {
  if (Clock::now() - waiting_since < std::chrono::microseconds(100)) return;
  std::this_thread::sleep_for(std::chrono::microseconds(20));
}

// Waits, without a deadline, until a non-blocking communicator is no longer ncclInProgress
// (after creation or a split); throws CommError when it reports an error instead.
void wait_ready(ncclComm_t comm, const char* what) {
  const auto start = Clock::now();
  ncclResult_t state = ncclInProgress;
  while (true) {
    MOE_CHECK_NCCL(ncclCommGetAsyncError(comm, &state));
    if (state != ncclInProgress) break;
    pause_polling(start);
  }
  if (state != ncclSuccess) detail::throw_nccl_error(state, what, __FILE__, __LINE__);
}

void check_counts(const char* what, std::size_t send, std::size_t recv, int size) {
  if (send != static_cast<std::size_t>(size) || recv != static_cast<std::size_t>(size)) {
    throw std::invalid_argument(std::string("NcclCommunicator::") + what + ": " +
                                std::to_string(send) + " send and " + std::to_string(recv) +
                                " receive counts for a communicator of size " +
                                std::to_string(size));
  }
}

}  // namespace

NcclCommunicator::NcclCommunicator(MpiCommunicator& mpi) {
  MOE_CHECK_CUDA(cudaGetDevice(&device_));
  // Rank 0 sends its status with the id, so a failure there fails every rank instead of leaving
  // the others waiting in ncclCommInitRank.
  struct IdPacket {
    int status;
    ncclUniqueId id;
  } packet{};
  if (mpi.rank() == 0) packet.status = static_cast<int>(ncclGetUniqueId(&packet.id));
  MOE_CHECK_MPI(MPI_Bcast(&packet, static_cast<int>(sizeof packet), MPI_BYTE, 0, mpi.native()));
  if (packet.status != static_cast<int>(ncclSuccess)) {
    detail::throw_nccl_error(static_cast<ncclResult_t>(packet.status),
                             "ncclGetUniqueId (on rank 0 of the MPI communicator)", __FILE__,
                             __LINE__);
  }
  // Non-blocking: no NCCL call waits for a peer on the host, so the watchdog can always act.
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  ncclComm_t comm = nullptr;
  MOE_CHECK_NCCL_ACCEPTED(ncclCommInitRankConfig(&comm, mpi.size(), packet.id, mpi.rank(), &config));
  try {
    wait_ready(comm, "ncclCommInitRankConfig (asynchronous part)");
  } catch (...) {
    if (comm != nullptr) ncclCommAbort(comm);
    throw;
  }
  attach(comm);
}

NcclCommunicator::NcclCommunicator(Adopt, ncclComm_t comm, int device) : device_(device) {
  attach(comm);
}

void NcclCommunicator::attach(ncclComm_t comm) {
  // Owned from here on: a constructor that throws runs no destructor, so release on failure.
  comm_ = comm;
  try {
    DeviceScope scope(device_);
    MOE_CHECK_NCCL(ncclCommUserRank(comm, &rank_));
    MOE_CHECK_NCCL(ncclCommCount(comm, &size_));
    host_ = this_host_name();
    MOE_CHECK_CUDA(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    void* scratch = nullptr;
    MOE_CHECK_CUDA(cudaMalloc(&scratch, sizeof(std::int32_t)));
    barrier_scratch_ = static_cast<std::int32_t*>(scratch);
    // Zero, so the barrier's sum stays zero however often it runs.
    MOE_CHECK_CUDA(cudaMemset(barrier_scratch_, 0, sizeof(std::int32_t)));
    gather_hosts();
  } catch (...) {
    // Null when a failed operation already aborted it.
    if (comm_ != nullptr) ncclCommAbort(comm_);
    comm_ = nullptr;
    if (barrier_scratch_ != nullptr) cudaFree(barrier_scratch_);
    barrier_scratch_ = nullptr;
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
    stream_ = nullptr;
    throw;
  }
}

void NcclCommunicator::gather_hosts() {
  constexpr std::size_t width = 64;
  const auto n = static_cast<std::size_t>(size_);
  std::vector<char> all(width * n);
  host_.copy(all.data() + width * static_cast<std::size_t>(rank_), width - 1);
  void* device = nullptr;
  MOE_CHECK_CUDA(cudaMalloc(&device, width * n));
  try {
    char* at = static_cast<char*>(device);
    MOE_CHECK_CUDA(cudaMemcpy(at + width * static_cast<std::size_t>(rank_),
                              all.data() + width * static_cast<std::size_t>(rank_), width,
                              cudaMemcpyHostToDevice));
    MOE_CHECK_NCCL_ACCEPTED(ncclAllGather(at + width * static_cast<std::size_t>(rank_), at, width,
                                          ncclChar, comm_, stream_));
    complete("ncclAllGather (host names)");
    MOE_CHECK_CUDA(cudaMemcpy(all.data(), at, width * n, cudaMemcpyDeviceToHost));
  } catch (...) {
    cudaFree(device);
    throw;
  }
  cudaFree(device);
  peer_hosts_.clear();
  for (std::size_t r = 0; r < n; ++r) {
    all[r * width + width - 1] = '\0';
    peer_hosts_.emplace_back(all.data() + r * width);
  }
}

NcclCommunicator::~NcclCommunicator() {
  int previous = device_;
  cudaGetDevice(&previous);
  cudaSetDevice(device_);
  if (comm_ != nullptr) {
    // Finalize waits for the peers (globally quiescent); bounded by the watchdog when armed.
    const WatchdogDeadline deadline(timeout_seconds_);
    ncclResult_t state = ncclCommFinalize(comm_);
    const auto start = Clock::now();
    while (state == ncclInProgress && !deadline.expired()) {
      if (ncclCommGetAsyncError(comm_, &state) != ncclSuccess) break;
      pause_polling(start);
    }
    if (state == ncclSuccess) {
      ncclCommDestroy(comm_);
    } else {
      ncclCommAbort(comm_);
    }
  }
  if (barrier_scratch_ != nullptr) cudaFree(barrier_scratch_);
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
  cudaSetDevice(previous);
}

std::unique_ptr<DeviceCommunicator> NcclCommunicator::split(int color, int key) const {
  check_usable("split");
  DeviceScope scope(device_);
  ncclComm_t part = nullptr;
  // The new communicator inherits the configuration (non-blocking) when config is null.
  MOE_CHECK_NCCL_ACCEPTED(
      ncclCommSplit(comm_, color < 0 ? NCCL_SPLIT_NOCOLOR : color, key, &part, nullptr));
  wait_ready(comm_, "ncclCommSplit (asynchronous part)");
  if (part == nullptr) return nullptr;
  try {
    wait_ready(part, "ncclCommSplit (the new communicator)");
  } catch (...) {
    ncclCommAbort(part);
    throw;
  }
  std::unique_ptr<NcclCommunicator> child(new NcclCommunicator(Adopt{}, part, device_));
  child->timeout_seconds_ = timeout_seconds_;
  child->action_ = action_;
  return child;
}

int NcclCommunicator::host_leader() const {
  check_usable("host_leader");
  int leader = 0;
  while (peer_hosts_[static_cast<std::size_t>(leader)] != host_) ++leader;
  return leader;
}

void NcclCommunicator::set_timeout(double seconds) {
  if (!(seconds >= 0)) {
    throw std::invalid_argument("NcclCommunicator::set_timeout: seconds must be >= 0, got " +
                                std::to_string(seconds));
  }
  timeout_seconds_ = seconds;
}

void NcclCommunicator::check_usable(const char* operation) const {
  if (poisoned_.empty()) return;
  throw CommError(std::string("moe-ep: ") + operation +
                      " refused: this NCCL communicator is unusable (" + poisoned_ +
                      "); end the job instead of using it",
                  this_world_rank(), host_);
}

void NcclCommunicator::complete(const char* operation) {
  const WatchdogDeadline deadline(timeout_seconds_);
  ncclResult_t async = ncclSuccess;
  cudaError_t query = cudaSuccess;
  NcclWaitState state = NcclWaitState::pending;
  const bool finished = poll_until(
      deadline,
      [&] {
        const ncclResult_t got = ncclCommGetAsyncError(comm_, &async);
        if (got != ncclSuccess) async = got;
        query = async == ncclSuccess ? cudaStreamQuery(stream_) : cudaSuccess;
        state = nccl_wait_state(async, query);
        return state != NcclWaitState::pending;
      },
      [&] { pause_polling(deadline.start()); });
  if (!finished) watchdog_expired(operation);
  if (state == NcclWaitState::done) return;
  // NCCL or the stream failed: the communicator cannot be trusted with another operation.
  const std::string what = std::string(operation) + " (asynchronous error)";
  poisoned_ = what + " failed";
  if (state == NcclWaitState::nccl_failed) {
    abort_nccl();
    detail::throw_nccl_error(async, what.c_str(), __FILE__, __LINE__);
  }
  abort_nccl();
  detail::throw_cuda_error(query, what.c_str(), __FILE__, __LINE__);
}

bool NcclCommunicator::abort_nccl() noexcept {
  if (comm_ != nullptr) ncclCommAbort(comm_);  // blocking even for a non-blocking communicator
  comm_ = nullptr;
  // The aborted kernels exit; until the stream says so, device buffers may still be written.
  const auto start = Clock::now();
  while (cudaStreamQuery(stream_) == cudaErrorNotReady) {
    if (Clock::now() - start > std::chrono::duration<double>(drain_seconds)) return false;
    pause_polling(start);
  }
  return true;
}

void NcclCommunicator::watchdog_expired(const char* operation) {
  WatchdogReport r =
      make_watchdog_report(operation, timeout_seconds_, rank_, size_, this_world_rank(), host_, context_);
  r.peers = "NCCL does not say which peers have joined; its ranks are on " +
            (peer_hosts_.empty() ? std::string("(hosts not known yet)") : ranks_by_host(peer_hosts_));
  poisoned_ = watchdog_message(r, action_);
  if (!abort_nccl()) {
    r.peers += "; the stream did not drain within 10 s of ncclCommAbort, so device buffers may "
               "still be written";
    watchdog_fire(r, WatchdogAction::abort_job);
  }
  watchdog_fire(r, action_);
}

void NcclCommunicator::alltoallv(const std::byte* send, std::span<const std::size_t> send_bytes,
                                 std::byte* recv, std::span<const std::size_t> recv_bytes) {
  check_usable("alltoallv");
  check_counts("alltoallv", send_bytes.size(), recv_bytes.size(), size_);
  DeviceScope scope(device_);
  // One group: NCCL schedules all pairs together, so no ordering of sends and receives can
  // deadlock, and empty blocks are simply not posted.
  MOE_CHECK_NCCL(ncclGroupStart());
  std::size_t send_offset = 0;
  std::size_t recv_offset = 0;
  for (int peer = 0; peer < size_; ++peer) {
    const auto p = static_cast<std::size_t>(peer);
    if (send_bytes[p] > 0) {
      MOE_CHECK_NCCL_ACCEPTED(ncclSend(send + send_offset, send_bytes[p], ncclInt8, peer, comm_, stream_));
    }
    if (recv_bytes[p] > 0) {
      MOE_CHECK_NCCL_ACCEPTED(ncclRecv(recv + recv_offset, recv_bytes[p], ncclInt8, peer, comm_, stream_));
    }
    send_offset += send_bytes[p];
    recv_offset += recv_bytes[p];
  }
  MOE_CHECK_NCCL_ACCEPTED(ncclGroupEnd());
  complete("grouped ncclSend/ncclRecv");
}

void NcclCommunicator::alltoall(const std::byte* send, std::byte* recv, std::size_t block_bytes) {
  check_usable("alltoall");
  if (block_bytes == 0) return;  // the same on every rank: nobody posts anything
  DeviceScope scope(device_);
  MOE_CHECK_NCCL(ncclGroupStart());
  for (int peer = 0; peer < size_; ++peer) {
    const std::size_t offset = static_cast<std::size_t>(peer) * block_bytes;
    MOE_CHECK_NCCL_ACCEPTED(ncclSend(send + offset, block_bytes, ncclInt8, peer, comm_, stream_));
    MOE_CHECK_NCCL_ACCEPTED(ncclRecv(recv + offset, block_bytes, ncclInt8, peer, comm_, stream_));
  }
  MOE_CHECK_NCCL_ACCEPTED(ncclGroupEnd());
  complete("grouped ncclSend/ncclRecv");
}

void NcclCommunicator::allgather(const std::byte* send, std::byte* recv, std::size_t block_bytes) {
  check_usable("allgather");
  DeviceScope scope(device_);
  MOE_CHECK_NCCL_ACCEPTED(ncclAllGather(send, recv, block_bytes, ncclInt8, comm_, stream_));
  complete("ncclAllGather");
}

void NcclCommunicator::reduce_in_place(void* data, std::size_t count, ncclDataType_t type,
                                       ReduceOp op) {
  check_usable("allreduce");
  DeviceScope scope(device_);
  MOE_CHECK_NCCL_ACCEPTED(ncclAllReduce(data, data, count, type, to_nccl(op), comm_, stream_));
  complete("ncclAllReduce");
}

void NcclCommunicator::allreduce(std::span<float> data, ReduceOp op) {
  reduce_in_place(data.data(), data.size(), ncclFloat32, op);
}

void NcclCommunicator::allreduce(std::span<double> data, ReduceOp op) {
  reduce_in_place(data.data(), data.size(), ncclFloat64, op);
}

void NcclCommunicator::allreduce(std::span<std::int64_t> data, ReduceOp op) {
  reduce_in_place(data.data(), data.size(), ncclInt64, op);
}

void NcclCommunicator::barrier() {
  check_usable("barrier");
  reduce_in_place(barrier_scratch_, 1, ncclInt32, ReduceOp::sum);
}


}  // namespace moe::comm
