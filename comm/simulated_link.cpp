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
    : SimulatedLinkCommunicator(std::move(inner), model, model, {}) {}

SimulatedLinkCommunicator::SimulatedLinkCommunicator(Communicator& inner, const LinkModel& model)
    : SimulatedLinkCommunicator(inner, model, model, {}) {}

SimulatedLinkCommunicator::SimulatedLinkCommunicator(Communicator& inner, const LinkModel& inside,
                                                     const LinkModel& between,
                                                     std::vector<int> node_of_rank)
    : inner_(inner), model_(inside), between_(between), node_of_rank_(std::move(node_of_rank)) {
  count_peers();
}

SimulatedLinkCommunicator::SimulatedLinkCommunicator(std::unique_ptr<Communicator> inner,
                                                     const LinkModel& inside,
                                                     const LinkModel& between,
                                                     std::vector<int> node_of_rank)
    : owned_(std::move(inner)),
      inner_(owned_ ? *owned_
                    : throw std::invalid_argument("SimulatedLinkCommunicator: null communicator")),
      model_(inside), between_(between), node_of_rank_(std::move(node_of_rank)) {
  count_peers();
}

void SimulatedLinkCommunicator::count_peers() {
  model_.validate();
  between_.validate();
  if (!node_of_rank_.empty() && node_of_rank_.size() != static_cast<std::size_t>(inner_.size())) {
    throw std::invalid_argument("SimulatedLinkCommunicator: " + std::to_string(node_of_rank_.size()) +
                                " nodes given for " + std::to_string(inner_.size()) + " ranks");
  }
  inside_peers_ = between_peers_ = 0;
  for (std::size_t p = 0; p < static_cast<std::size_t>(inner_.size()); ++p) {
    if (p == static_cast<std::size_t>(inner_.rank())) continue;
    ++(same_node(p) ? inside_peers_ : between_peers_);
  }
}

bool SimulatedLinkCommunicator::same_node(std::size_t peer) const {
  return node_of_rank_.empty() ||
         node_of_rank_[peer] == node_of_rank_[static_cast<std::size_t>(inner_.rank())];
}

void SimulatedLinkCommunicator::complete_no_earlier(Clock::time_point start,
                                                    std::size_t inside_bytes,
                                                    std::size_t between_bytes) const {
  if (inner_.size() <= 1) return;
  std::chrono::nanoseconds wait{0};
  if (inside_peers_ > 0) wait = model_.transfer_time(inside_bytes);
  if (between_peers_ > 0) wait = std::max(wait, between_.transfer_time(between_bytes));
  const Clock::time_point deadline = start + wait;
  // A sleeping thread leaves the core to compute; the loop guards against an early wake-up.
  while (Clock::now() < deadline) std::this_thread::sleep_until(deadline);
}

std::unique_ptr<Communicator> SimulatedLinkCommunicator::split(int color, int key) const {
  const auto start = Clock::now();
  std::unique_ptr<Communicator> sub = inner_.split(color, key);
  complete_no_earlier(start, 0);
  if (!sub) return nullptr;
  std::vector<int> nodes;
  if (!node_of_rank_.empty()) {
    // The members' nodes, in the new communicator's rank order.
    const int mine = node_of_rank_[static_cast<std::size_t>(inner_.rank())];
    nodes.resize(static_cast<std::size_t>(sub->size()));
    sub->allgather(reinterpret_cast<const std::byte*>(&mine), reinterpret_cast<std::byte*>(nodes.data()),
                   sizeof(int));
  }
  return std::make_unique<SimulatedLinkCommunicator>(std::move(sub), model_, between_, std::move(nodes));
}

void SimulatedLinkCommunicator::alltoallv(const std::byte* send,
                                          std::span<const std::size_t> send_bytes,
                                          std::byte* recv,
                                          std::span<const std::size_t> recv_bytes) {
  const auto start = Clock::now();
  inner_.alltoallv(send, send_bytes, recv, recv_bytes);
  // Per class: the busier direction, leaving out this rank's own block.
  std::size_t sent[2] = {0, 0}, received[2] = {0, 0};
  for (std::size_t p = 0; p < send_bytes.size(); ++p) {
    if (p == static_cast<std::size_t>(rank())) continue;
    const int between = same_node(p) ? 0 : 1;
    sent[between] += send_bytes[p];
    received[between] += recv_bytes[p];
  }
  complete_no_earlier(start, std::max(sent[0], received[0]), std::max(sent[1], received[1]));
}

void SimulatedLinkCommunicator::alltoall(const std::byte* send, std::byte* recv,
                                         std::size_t block_bytes) {
  const auto start = Clock::now();
  inner_.alltoall(send, recv, block_bytes);
  complete_no_earlier(start, inside_peers_ * block_bytes, between_peers_ * block_bytes);
}

void SimulatedLinkCommunicator::allgather(const std::byte* send, std::byte* recv,
                                          std::size_t block_bytes) {
  const auto start = Clock::now();
  inner_.allgather(send, recv, block_bytes);
  complete_no_earlier(start, inside_peers_ * block_bytes, between_peers_ * block_bytes);
}

void SimulatedLinkCommunicator::reduce_no_earlier(Clock::time_point start, std::size_t data_bytes) const {
  // The ring passes every rank: across nodes it runs at the speed of the slower class.
  const std::size_t bytes = allreduce_link_bytes(size(), data_bytes);
  complete_no_earlier(start, between_peers_ > 0 ? 0 : bytes, between_peers_ > 0 ? bytes : 0);
}

void SimulatedLinkCommunicator::allreduce(std::span<float> data, ReduceOp op) {
  const auto start = Clock::now();
  inner_.allreduce(data, op);
  reduce_no_earlier(start, data.size_bytes());
}

void SimulatedLinkCommunicator::allreduce(std::span<double> data, ReduceOp op) {
  const auto start = Clock::now();
  inner_.allreduce(data, op);
  reduce_no_earlier(start, data.size_bytes());
}

void SimulatedLinkCommunicator::allreduce(std::span<std::int64_t> data, ReduceOp op) {
  const auto start = Clock::now();
  inner_.allreduce(data, op);
  reduce_no_earlier(start, data.size_bytes());
}

void SimulatedLinkCommunicator::barrier() {
  const auto start = Clock::now();
  inner_.barrier();
  complete_no_earlier(start, 0);
}

}  // namespace moe::comm
