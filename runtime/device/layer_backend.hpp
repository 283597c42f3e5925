// What the device layer (runtime/device/device_layer.hpp) needs of the place it runs: a memory
// space with buffers, a launcher for the data-path ops, grouped GEMMs, copies to and from the
// host, the payload exchange of one chunk of the dispatch plan, and timing marks on the compute
// and exchange orders (what overlap_chunks = auto decides from). Two backends implement it:
// HostBackend (runtime/device/host_backend.hpp: the host launcher, oneDNN GEMMs, an MPI
// communicator) and CudaBackend (runtime/device/cuda_backend.hpp, CUDA builds: CUDA kernels on a
// compute stream, cuBLAS, NCCL on a communication stream). The layer's control logic is written
// once against this concept, so the host suite tests the very composition a GPU runs.
#pragma once

#include <cstddef>
#include <cstdint>
#include <concepts>
#include <span>

#include "experts/device/gemm_column_major.hpp"
#include "runtime/device/permute_ops.hpp"
#include "runtime/dispatch_plan.hpp"

namespace moe::device {

// The two orders a backend runs work in: the compute (launches, GEMMs, copies) and the exchanges.
// On a GPU they are two streams; on the host both are the calling thread.
enum class Lane { compute, comm };

// A buffer of the backend's memory space that grows (contents not kept) and is then reused.
template <class Buffer, class T>
concept SpaceBuffer = requires(Buffer& b, const Buffer& cb, std::int64_t n) {
  b.reserve(n);
  { cb.data() } -> std::same_as<T*>;
};

template <class B>
concept LayerBackend = requires(B& b, const DispatchPlan& plan, int c, const std::byte* from,
                                std::byte* to, std::size_t row_bytes, float* p,
                                std::span<const float> host_in, std::span<float> host_out,
                                std::span<const experts::GemmGroup> groups, experts::Op op) {
  typename B::MemorySpace;
  requires SpaceBuffer<typename B::template Buffer<float>, float>;
  requires SpaceBuffer<typename B::template Buffer<std::int64_t>, std::int64_t>;
  // op(i) for i in [0, n): B::launch(n, op), for every op of the data path.
  b.launch(std::int64_t{1}, AddRowsOp{});
  // Every group with the same ops, alpha and beta; groups with m, n or k = 0 are skipped.
  b.gemm(op, op, 1.0f, 0.0f, groups);
  // Host to the space and back (templates over the element type). download waits for the
  // space's work enqueued so far, so the host may read the values at once.
  b.upload(host_in, p);
  b.download(static_cast<const float*>(p), host_out);
  b.zero(p, std::int64_t{1});
  // The chunked exchange: chunks reserved once, the packing of chunk c done (all work so far),
  // its rows out (send -> recv) and back (recv -> send order), the compute waiting for arrival.
  b.reserve_chunks(c);
  b.packed(c);
  b.dispatch(plan, c, from, to, row_bytes);
  b.combine(plan, c, from, to, row_bytes);
  b.await_arrival(c);
  b.synchronize();
  // Timing: marks [0, n) reserved once; mark(lane, i) records when `lane` reaches that point (all
  // work enqueued on it so far done), and seconds(i, j) is the time from mark i to mark j, read
  // from the place the work runs (waiting for both marks), never from host clocks around
  // asynchronous work.
  b.reserve_marks(c);
  b.mark(Lane::compute, c);
  { b.seconds(c, c) } -> std::same_as<double>;
};

}  // namespace moe::device
