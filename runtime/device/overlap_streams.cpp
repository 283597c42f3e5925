#include "runtime/device/overlap_streams.hpp"

#include <stdexcept>
#include <string>

namespace moe::device {
namespace {

void check(cudaError_t code, const char* call) {
  if (code != cudaSuccess) {
    throw std::runtime_error(std::string("moe-ep: ") + call + " failed: " + cudaGetErrorString(code));
  }
}

// Ordering events skip timing, which makes recording and waiting on them cheaper.
cudaEvent_t new_event(unsigned flags = cudaEventDisableTiming) {
  cudaEvent_t event = nullptr;
  check(cudaEventCreateWithFlags(&event, flags), "cudaEventCreateWithFlags");
  return event;
}

}  // namespace

OverlapStreams::OverlapStreams(cudaStream_t comm) : comm_(comm) {
  check(cudaStreamCreateWithFlags(&compute_, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
}

OverlapStreams::~OverlapStreams() {
  for (cudaEvent_t e : packed_) cudaEventDestroy(e);
  for (cudaEvent_t e : arrived_) cudaEventDestroy(e);
  for (cudaEvent_t e : marks_) cudaEventDestroy(e);
  cudaStreamDestroy(compute_);
}

void OverlapStreams::reserve(int chunks) {
  while (static_cast<int>(packed_.size()) < chunks) {
    packed_.push_back(new_event());
    arrived_.push_back(new_event());
  }
}

void OverlapStreams::packed(int c) {
  check(cudaEventRecord(packed_.at(static_cast<std::size_t>(c)), compute_), "cudaEventRecord");
}

void OverlapStreams::exchange_after_packing(int c) {
  check(cudaStreamWaitEvent(comm_, packed_.at(static_cast<std::size_t>(c)), 0), "cudaStreamWaitEvent");
}

void OverlapStreams::arrived(int c) {
  check(cudaEventRecord(arrived_.at(static_cast<std::size_t>(c)), comm_), "cudaEventRecord");
}

void OverlapStreams::compute_after_arrival(int c) {
  check(cudaStreamWaitEvent(compute_, arrived_.at(static_cast<std::size_t>(c)), 0), "cudaStreamWaitEvent");
}

void OverlapStreams::reserve_marks(int n) {
  while (static_cast<int>(marks_.size()) < n) marks_.push_back(new_event(cudaEventDefault));
}

void OverlapStreams::mark(cudaStream_t stream, int i) {
  check(cudaEventRecord(marks_.at(static_cast<std::size_t>(i)), stream), "cudaEventRecord");
}

double OverlapStreams::seconds(int from, int to) {
  cudaEvent_t start = marks_.at(static_cast<std::size_t>(from)), end = marks_.at(static_cast<std::size_t>(to));
  check(cudaEventSynchronize(start), "cudaEventSynchronize");
  check(cudaEventSynchronize(end), "cudaEventSynchronize");
  float ms = 0;
  check(cudaEventElapsedTime(&ms, start, end), "cudaEventElapsedTime");
  return 1e-3 * static_cast<double>(ms);
}

}  // namespace moe::device
