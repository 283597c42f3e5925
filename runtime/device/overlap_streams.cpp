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

cudaEvent_t new_event() {
  cudaEvent_t event = nullptr;
  check(cudaEventCreateWithFlags(&event, cudaEventDisableTiming), "cudaEventCreateWithFlags");
  return event;
}

}  // namespace

OverlapStreams::OverlapStreams(cudaStream_t comm) : comm_(comm) {
  check(cudaStreamCreateWithFlags(&compute_, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
}

OverlapStreams::~OverlapStreams() {
  for (cudaEvent_t e : packed_) cudaEventDestroy(e);
  for (cudaEvent_t e : arrived_) cudaEventDestroy(e);
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

}  // namespace moe::device
