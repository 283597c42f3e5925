#include "comm/simulated_link.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <thread>

namespace moe::comm {

namespace {

using Clock = std::chrono::steady_clock;

// Bytes of a span of blocks, leaving out block `skip` (this rank's own).
std::size_t sum_except(std::span<const std::size_t> bytes, std::size_t skip) {
  std::size_t total = 0;
  for (std::size_t p = 0; p < bytes.size(); ++p) {
    if (p != skip) total += bytes[p];
  }
  return total;
}

std::size_t peers(int num_ranks) { return num_ranks > 1 ? static_cast<std::size_t>(num_ranks - 1) : 0; }

}  // namespace

void LinkModel::validate() const {
  if (!std::isfinite(latency_us) || latency_us < 0) {
    throw std::invalid_argument("LinkModel: latency_us must be finite and >= 0, got " +
                                std::to_string(latency_us));
  }
  if (!std::isfinite(bandwidth_gbps) || bandwidth_gbps < 0) {
    throw std::invalid_argument("LinkModel: bandwidth_gbps must be finite and >= 0 (0 = unlimited), got " +
                                std::to_string(bandwidth_gbps));
  }
}

std::chrono::nanoseconds LinkModel::transfer_time(std::size_t bytes) const {
  double ns = latency_us * 1e3;
  // bytes / (gbps * 1e9 bytes/s) in ns is bytes / gbps.
  if (bandwidth_gbps > 0) ns += static_cast<double>(bytes) / bandwidth_gbps;
  return std::chrono::nanoseconds(static_cast<std::chrono::nanoseconds::rep>(std::ceil(ns)));
}

std::size_t alltoallv_link_bytes(int rank, std::span<const std::size_t> send_bytes,
                                 std::span<const std::size_t> recv_bytes) {
  const auto self = static_cast<std::size_t>(rank);
  return std::max(sum_except(send_bytes, self), sum_except(recv_bytes, self));
}

std::size_t alltoall_link_bytes(int num_ranks, std::size_t block_bytes) {
  return peers(num_ranks) * block_bytes;
}

std::size_t allgather_link_bytes(int num_ranks, std::size_t block_bytes) {
  return peers(num_ranks) * block_bytes;
}

std::size_t allreduce_link_bytes(int num_ranks, std::size_t data_bytes) {
  if (num_ranks <= 1) return 0;
  // Reduce-scatter then all-gather around a ring: each sends (and receives) 2 (P-1) chunks of
  // data/P. Computed as (2 (P-1) data) / P, rounded up, so no byte is lost to the division.
  const auto p = static_cast<std::size_t>(num_ranks);
  const std::size_t moved = 2 * (p - 1) * data_bytes;
  return moved / p + (moved % p != 0 ? 1 : 0);
}

SimulatedLinkCommunicator::SimulatedLinkCommunicator(std::unique_ptr<Communicator> inner,
                                                     const LinkModel& model)
    : owned_(std::move(inner)),
      inner_(owned_ ? *owned_
                    : throw std::invalid_argument("SimulatedLinkCommunicator: null communicator")),
      model_(model) {
  model_.validate();
}

SimulatedLinkCommunicator::SimulatedLinkCommunicator(Communicator& inner, const LinkModel& model)
    : inner_(inner), model_(model) {
  model_.validate();
}

void SimulatedLinkCommunicator::complete_no_earlier(Clock::time_point start,
                                                    std::size_t bytes) const {
  if (inner_.size() <= 1) return;
  const Clock::time_point deadline = start + model_.transfer_time(bytes);
  // A sleeping thread leaves the core to compute; the loop guards against an early wake-up.
  while (Clock::now() < deadline) std::this_thread::sleep_until(deadline);
}

std::unique_ptr<Communicator> SimulatedLinkCommunicator::split(int color, int key) const {
  const auto start = Clock::now();
  std::unique_ptr<Communicator> sub = inner_.split(color, key);
  complete_no_earlier(start, 0);
  if (!sub) return nullptr;
  return std::make_unique<SimulatedLinkCommunicator>(std::move(sub), model_);
}

void SimulatedLinkCommunicator::alltoallv(const std::byte* send,
                                          std::span<const std::size_t> send_bytes,
                                          std::byte* recv,
                                          std::span<const std::size_t> recv_bytes) {
  const auto start = Clock::now();
  inner_.alltoallv(send, send_bytes, recv, recv_bytes);
  complete_no_earlier(start, alltoallv_link_bytes(rank(), send_bytes, recv_bytes));
}

void SimulatedLinkCommunicator::alltoall(const std::byte* send, std::byte* recv,
                                         std::size_t block_bytes) {
  const auto start = Clock::now();
  inner_.alltoall(send, recv, block_bytes);
  complete_no_earlier(start, alltoall_link_bytes(size(), block_bytes));
}

void SimulatedLinkCommunicator::allgather(const std::byte* send, std::byte* recv,
                                          std::size_t block_bytes) {
  const auto start = Clock::now();
  inner_.allgather(send, recv, block_bytes);
  complete_no_earlier(start, allgather_link_bytes(size(), block_bytes));
}

void SimulatedLinkCommunicator::allreduce(std::span<float> data, ReduceOp op) {
  const auto start = Clock::now();
  inner_.allreduce(data, op);
  complete_no_earlier(start, allreduce_link_bytes(size(), data.size_bytes()));
}

void SimulatedLinkCommunicator::allreduce(std::span<double> data, ReduceOp op) {
  const auto start = Clock::now();
  inner_.allreduce(data, op);
  complete_no_earlier(start, allreduce_link_bytes(size(), data.size_bytes()));
}

void SimulatedLinkCommunicator::allreduce(std::span<std::int64_t> data, ReduceOp op) {
  const auto start = Clock::now();
  inner_.allreduce(data, op);
  complete_no_earlier(start, allreduce_link_bytes(size(), data.size_bytes()));
}

void SimulatedLinkCommunicator::barrier() {
  const auto start = Clock::now();
  inner_.barrier();
  complete_no_earlier(start, 0);
}

}  // namespace moe::comm
