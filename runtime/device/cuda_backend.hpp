// The device layer's CUDA backend (CUDA builds): device memory, the data-path ops as CUDA kernels
// on the compute stream (experts/device/launch_device.hpp), the expert GEMMs on cuBLAS's grouped
// GEMM (experts/cuda/cublas_grouped_gemm.hpp) on the same stream, and the chunk exchanges over
// NCCL on the communication stream (runtime/device/device_exchange.hpp), ordered against the
// compute stream by OverlapStreams' events. The layer's control traffic (counts, error agreement,
// statistics) goes over the same NCCL communicator, staged through device memory (control()).
// MPI only bootstraps NCCL.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>

#include "comm/mpi_communicator.hpp"
#include "comm/nccl_communicator.hpp"
#include "comm/staged_communicator.hpp"
#include "experts/cuda/cublas_grouped_gemm.hpp"
#include "experts/device/launch_device.hpp"
#include "runtime/device/device_buffer.hpp"
#include "runtime/device/device_exchange.hpp"
#include "runtime/device/layer_backend.hpp"
#include "runtime/device/overlap_streams.hpp"

namespace moe::device {

class CudaBackend {
 public:
  using MemorySpace = comm::DeviceMemory;

  template <class T>
  class Buffer {
   public:
    void reserve(std::int64_t n) { raw_.reserve(static_cast<std::size_t>(n) * sizeof(T)); }
    T* data() const { return raw_.as<T>(); }

   private:
    DeviceBuffer raw_;
  };

  // Collective over `mpi`: the NCCL communicator (on the current CUDA device), the streams, the
  // cuBLAS handle. `mpi` carries NCCL's unique id and is not used afterwards. Throws CommError or
  // std::runtime_error naming the failed call.
  explicit CudaBackend(comm::MpiCommunicator& mpi);
  ~CudaBackend();
  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;

  comm::NcclCommunicator& nccl() { return *nccl_; }
  // The layer's host `control` communicator: nccl() with its operations staged through device
  // memory (comm/staged_communicator.hpp), so the counts travel by NCCL like the rows.
  comm::Communicator& control() { return control_; }

  template <IndexOp Op>
  void launch(std::int64_t n, const Op& op) {
    check(launch_device(n, op, streams_.compute()), "a data-path kernel launch");
  }
  void gemm(experts::Op op_a, experts::Op op_b, float alpha, float beta,
            std::span<const experts::GemmGroup> groups);

  template <class T>
  void upload(std::span<const T> host, T* space) {
    copy(space, host.data(), host.size_bytes(), cudaMemcpyHostToDevice);
  }
  template <class T>
  void download(const T* space, std::span<T> host) {
    copy(host.data(), space, host.size_bytes(), cudaMemcpyDeviceToHost);
    synchronize();
  }
  template <class T>
  void zero(T* space, std::int64_t n) {
    fill_zero(space, static_cast<std::size_t>(n) * sizeof(T));
  }

  void reserve_chunks(int chunks) { streams_.reserve(chunks); }
  void packed(int c) { streams_.packed(c); }
  void await_arrival(int c) { streams_.compute_after_arrival(c); }
  // Waits for everything enqueued on the compute stream.
  void synchronize();
  void dispatch(const DispatchPlan& plan, int c, const std::byte* send, std::byte* recv,
                std::size_t row_bytes) {
    exchange_.dispatch(plan, c, send, recv, row_bytes);
  }
  void combine(const DispatchPlan& plan, int c, const std::byte* recv, std::byte* back,
               std::size_t row_bytes) {
    exchange_.combine(plan, c, recv, back, row_bytes);
  }
  void reserve_marks(int n) { streams_.reserve_marks(n); }
  void mark(Lane lane, int i) { streams_.mark(lane == Lane::compute ? streams_.compute() : streams_.comm(), i); }
  double seconds(int from, int to) { return streams_.seconds(from, to); }

 private:
  static void check(cudaError_t code, const char* what);
  void copy(void* to, const void* from, std::size_t bytes, cudaMemcpyKind kind);
  void fill_zero(void* to, std::size_t bytes);

  std::unique_ptr<comm::NcclCommunicator> nccl_;
  comm::StagedCommunicator control_;  // over *nccl_, so declared after it
  OverlapStreams streams_;
  DeviceExchange exchange_;
  experts::CublasGroupedGemm gemm_;
};

static_assert(LayerBackend<CudaBackend>);

}  // namespace moe::device
