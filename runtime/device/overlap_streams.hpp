// The two streams of the device path's chunked overlap (CUDA builds) and the events that order
// them: the compute stream packs chunk c and runs its experts; the communication stream (the
// NcclCommunicator's own) exchanges it. Chunk c's exchange waits for its packing (`packed`), and
// its experts wait for its arrival (`arrived`); nothing else is ordered, so while chunk c is
// exchanged the GPU computes chunk c-1. Events are created once for the largest chunk count. Timing
// marks on either stream give device-measured times (what overlap_chunks = auto decides from).
#pragma once

#include <cuda_runtime_api.h>

#include <vector>

namespace moe::device {

class OverlapStreams {
 public:
  // A new compute stream on the current device; `comm` is the communicator's stream (not owned).
  explicit OverlapStreams(cudaStream_t comm);
  ~OverlapStreams();
  OverlapStreams(const OverlapStreams&) = delete;
  OverlapStreams& operator=(const OverlapStreams&) = delete;

  cudaStream_t compute() const noexcept { return compute_; }
  cudaStream_t comm() const noexcept { return comm_; }

  // Events for up to `chunks` chunks (creates only the missing ones).
  void reserve(int chunks);

  // Chunk c is packed (all work enqueued so far on compute): its exchange may start.
  void packed(int c);
  // The communication stream waits for chunk c's packing.
  void exchange_after_packing(int c);
  // Chunk c has arrived (all work enqueued so far on comm).
  void arrived(int c);
  // The compute stream waits for chunk c's arrival.
  void compute_after_arrival(int c);

  // Timing marks (events with timing, unlike the ordering ones): marks [0, n), created once.
  void reserve_marks(int n);
  // Mark i: when `stream` (compute() or comm()) reaches this point.
  void mark(cudaStream_t stream, int i);
  // Seconds from mark `from` to mark `to`, measured by the device (waits for both).
  double seconds(int from, int to);

 private:
  cudaStream_t compute_ = nullptr;
  cudaStream_t comm_ = nullptr;
  std::vector<cudaEvent_t> packed_, arrived_, marks_;
};

}  // namespace moe::device
