#include "comm/nccl_communicator.hpp"

#include <mpi.h>

#include <stdexcept>
#include <string>

#include "comm/mpi_check.hpp"
#include "comm/nccl_check.hpp"

namespace moe::comm {
namespace {

ncclRedOp_t to_nccl(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum: return ncclSum;
    case ReduceOp::max: return ncclMax;
    case ReduceOp::min: return ncclMin;
  }
  throw std::invalid_argument("moe::comm: unknown ReduceOp");
}

// Makes the communicator's device current for one call and restores the caller's afterwards:
// NCCL and the stream belong to that device, and the caller's choice must not change under it.
class DeviceScope {
 public:
  explicit DeviceScope(int device) {
    MOE_CHECK_CUDA(cudaGetDevice(&previous_));
    if (previous_ != device) MOE_CHECK_CUDA(cudaSetDevice(device));
  }
  ~DeviceScope() { cudaSetDevice(previous_); }
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;

 private:
  int previous_ = 0;
};

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
  ncclComm_t comm = nullptr;
  MOE_CHECK_NCCL(ncclCommInitRank(&comm, mpi.size(), packet.id, mpi.rank()));
  attach(comm);
}

NcclCommunicator::NcclCommunicator(Adopt, ncclComm_t comm, int device) : device_(device) {
  attach(comm);
}

void NcclCommunicator::attach(ncclComm_t comm) {
  // Owned from here on: a constructor that throws runs no destructor, so release on failure.
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
  } catch (...) {
    if (barrier_scratch_ != nullptr) cudaFree(barrier_scratch_);
    barrier_scratch_ = nullptr;
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
    ncclCommDestroy(comm);
    throw;
  }
  comm_ = comm;
}

NcclCommunicator::~NcclCommunicator() {
  int previous = device_;
  cudaGetDevice(&previous);
  cudaSetDevice(device_);
  if (comm_ != nullptr) ncclCommDestroy(comm_);
  if (barrier_scratch_ != nullptr) cudaFree(barrier_scratch_);
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
  cudaSetDevice(previous);
}

std::unique_ptr<Communicator> NcclCommunicator::split(int color, int key) const {
  DeviceScope scope(device_);
  ncclComm_t part = nullptr;
  MOE_CHECK_NCCL(ncclCommSplit(comm_, color < 0 ? NCCL_SPLIT_NOCOLOR : color, key, &part, nullptr));
  if (part == nullptr) return nullptr;
  return std::unique_ptr<Communicator>(new NcclCommunicator(Adopt{}, part, device_));
}

void NcclCommunicator::alltoallv(const std::byte* send, std::span<const std::size_t> send_bytes,
                                 std::byte* recv, std::span<const std::size_t> recv_bytes) {
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
      MOE_CHECK_NCCL(ncclSend(send + send_offset, send_bytes[p], ncclInt8, peer, comm_, stream_));
    }
    if (recv_bytes[p] > 0) {
      MOE_CHECK_NCCL(ncclRecv(recv + recv_offset, recv_bytes[p], ncclInt8, peer, comm_, stream_));
    }
    send_offset += send_bytes[p];
    recv_offset += recv_bytes[p];
  }
  MOE_CHECK_NCCL(ncclGroupEnd());
  synchronize();
}

void NcclCommunicator::alltoall(const std::byte* send, std::byte* recv, std::size_t block_bytes) {
  if (block_bytes == 0) return;  // the same on every rank: nobody posts anything
  DeviceScope scope(device_);
  MOE_CHECK_NCCL(ncclGroupStart());
  for (int peer = 0; peer < size_; ++peer) {
    const std::size_t offset = static_cast<std::size_t>(peer) * block_bytes;
    MOE_CHECK_NCCL(ncclSend(send + offset, block_bytes, ncclInt8, peer, comm_, stream_));
    MOE_CHECK_NCCL(ncclRecv(recv + offset, block_bytes, ncclInt8, peer, comm_, stream_));
  }
  MOE_CHECK_NCCL(ncclGroupEnd());
  synchronize();
}

void NcclCommunicator::allgather(const std::byte* send, std::byte* recv, std::size_t block_bytes) {
  DeviceScope scope(device_);
  MOE_CHECK_NCCL(ncclAllGather(send, recv, block_bytes, ncclInt8, comm_, stream_));
  synchronize();
}

void NcclCommunicator::reduce_in_place(void* data, std::size_t count, ncclDataType_t type,
                                       ReduceOp op) {
  DeviceScope scope(device_);
  MOE_CHECK_NCCL(ncclAllReduce(data, data, count, type, to_nccl(op), comm_, stream_));
  synchronize();
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
  reduce_in_place(barrier_scratch_, 1, ncclInt32, ReduceOp::sum);
}

void NcclCommunicator::synchronize() { MOE_CHECK_CUDA(cudaStreamSynchronize(stream_)); }

}  // namespace moe::comm
