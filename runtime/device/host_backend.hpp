// The device layer's host backend: host memory, the host launcher (the same op bodies a GPU runs),
// oneDNN GEMMs one group at a time, and the chunk exchanges over a host communicator (MPI). With
// it the device layer's composition runs, and is tested, on a machine without a GPU.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "comm/communicator.hpp"
#include "experts/device/gemm_column_major.hpp"
#include "experts/device/launch_host.hpp"
#include "runtime/device/layer_backend.hpp"
#include "runtime/dispatch_plan.hpp"

namespace moe::device {

class HostBackend {
 public:
  using MemorySpace = comm::HostMemory;

  template <class T>
  class Buffer {
   public:
    void reserve(std::int64_t n) {
      if (static_cast<std::int64_t>(values_.size()) < n) values_.resize(static_cast<std::size_t>(n));
    }
    T* data() const { return const_cast<T*>(values_.data()); }

   private:
    std::vector<T> values_;
  };

  // `comm` carries the rows; it must outlive the backend.
  explicit HostBackend(comm::Communicator& comm);

  template <IndexOp Op>
  void launch(std::int64_t n, const Op& op) {
    launch_host(n, op);
  }
  void gemm(experts::Op op_a, experts::Op op_b, float alpha, float beta,
            std::span<const experts::GemmGroup> groups);

  template <class T>
  void upload(std::span<const T> host, T* space) {
    std::copy(host.begin(), host.end(), space);
  }
  template <class T>
  void download(const T* space, std::span<T> host) {
    std::copy(space, space + host.size(), host.begin());
  }
  template <class T>
  void zero(T* space, std::int64_t n) {
    std::fill(space, space + n, T{});
  }

  // The host runs every step in order: nothing to reserve, record or wait for.
  void reserve_chunks(int) {}
  void packed(int) {}
  void await_arrival(int) {}
  void synchronize() {}
  void dispatch(const DispatchPlan& plan, int c, const std::byte* send, std::byte* recv,
                std::size_t row_bytes);
  void combine(const DispatchPlan& plan, int c, const std::byte* recv, std::byte* back,
               std::size_t row_bytes);

  // Both lanes are this thread, which runs each step before returning: a mark is the clock when
  // the thread reaches it.
  void reserve_marks(int n) {
    if (static_cast<int>(marks_.size()) < n) marks_.resize(static_cast<std::size_t>(n));
  }
  void mark(Lane, int i) { marks_.at(static_cast<std::size_t>(i)) = std::chrono::steady_clock::now(); }
  double seconds(int from, int to) const {
    return std::chrono::duration<double>(marks_.at(static_cast<std::size_t>(to)) -
                                         marks_.at(static_cast<std::size_t>(from))).count();
  }

 private:
  comm::Communicator& comm_;
  std::vector<std::chrono::steady_clock::time_point> marks_;
  std::vector<std::size_t> to_peer_, from_peer_;
};

static_assert(LayerBackend<HostBackend>);

}  // namespace moe::device
