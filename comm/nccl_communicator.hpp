// Communicator over NCCL on device memory (CUDA builds only, MOE_HAS_CUDA). Every pointer and
// span handed to it must be device memory of the CUDA device that was current at construction.
//
// Operations are enqueued on a CUDA stream the communicator owns and the calling thread waits for
// that stream before returning: the blocking semantics of Communicator hold exactly, so callers
// may read results (and reuse buffers) right after a call, as with MpiCommunicator.
#pragma once

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <memory>
#include <span>
#include <string>

#include "comm/communicator.hpp"
#include "comm/mpi_communicator.hpp"

namespace moe::comm {

class NcclCommunicator final : public Communicator {
 public:
  // Collective over `mpi`: rank 0 of `mpi` creates the NCCL unique id and broadcasts it over MPI,
  // then every rank joins the NCCL communicator with its rank in `mpi`. Each rank uses the CUDA
  // device current when it calls (select it with cudaSetDevice first; two ranks may not share a
  // device). Throws CommError when CUDA, NCCL or MPI fails (on every rank when rank 0 cannot create
  // the id).
  explicit NcclCommunicator(MpiCommunicator& mpi);

  // Destroys the NCCL communicator, the stream and the scratch buffer.
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
  std::unique_ptr<Communicator> split(int color, int key) const override;

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

 private:
  struct Adopt {};
  // Takes ownership of `comm` (from ncclCommSplit) on `device`.
  NcclCommunicator(Adopt, ncclComm_t comm, int device);
  void attach(ncclComm_t comm);

  void reduce_in_place(void* data, std::size_t count, ncclDataType_t type, ReduceOp op);
  void synchronize();

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
