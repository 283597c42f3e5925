#include "comm/staged_communicator.hpp"

#include <numeric>
#include <stdexcept>
#include <utility>

namespace moe::comm {
namespace {

std::size_t total(std::span<const std::size_t> bytes) {
  return std::accumulate(bytes.begin(), bytes.end(), std::size_t{0});
}

std::unique_ptr<StagingMemory> checked(std::unique_ptr<StagingMemory> staging) {
  if (staging == nullptr) throw std::invalid_argument("StagedCommunicator: null staging memory");
  return staging;
}

DeviceCommunicator& checked(const std::unique_ptr<DeviceCommunicator>& device) {
  if (device == nullptr) throw std::invalid_argument("StagedCommunicator: null device communicator");
  return *device;
}

}  // namespace

StagedCommunicator::StagedCommunicator(DeviceCommunicator& device, std::unique_ptr<StagingMemory> staging)
    : device_(device), staging_(checked(std::move(staging))) {}

StagedCommunicator::StagedCommunicator(std::unique_ptr<DeviceCommunicator> device,
                                       std::unique_ptr<StagingMemory> staging)
    : owned_(std::move(device)), device_(checked(owned_)), staging_(checked(std::move(staging))) {}

std::unique_ptr<Communicator> StagedCommunicator::split(int color, int key) const {
  std::unique_ptr<DeviceCommunicator> part = device_.split(color, key);
  if (part == nullptr) return nullptr;
  return std::make_unique<StagedCommunicator>(std::move(part), staging_->make_another());
}

void StagedCommunicator::alltoallv(const std::byte* send, std::span<const std::size_t> send_bytes,
                                   std::byte* recv, std::span<const std::size_t> recv_bytes) {
  const auto n = static_cast<std::size_t>(size());
  if (send_bytes.size() != n || recv_bytes.size() != n) {
    throw std::invalid_argument("StagedCommunicator::alltoallv: " + std::to_string(send_bytes.size()) +
                                " send and " + std::to_string(recv_bytes.size()) +
                                " receive counts for a communicator of size " + std::to_string(n));
  }
  const std::size_t sent = total(send_bytes);
  const std::size_t received = total(recv_bytes);
  // One region, the send blocks then the receive blocks: one grow, one allocation at most.
  std::byte* staged = staging_->grow(sent + received);
  staging_->to_device(staged, send, sent);
  device_.alltoallv(staged, send_bytes, staged + sent, recv_bytes);
  staging_->to_host(recv, staged + sent, received);
}

void StagedCommunicator::alltoall(const std::byte* send, std::byte* recv, std::size_t block_bytes) {
  const std::size_t bytes = block_bytes * static_cast<std::size_t>(size());
  std::byte* staged = staging_->grow(2 * bytes);
  staging_->to_device(staged, send, bytes);
  device_.alltoall(staged, staged + bytes, block_bytes);
  staging_->to_host(recv, staged + bytes, bytes);
}

void StagedCommunicator::allgather(const std::byte* send, std::byte* recv, std::size_t block_bytes) {
  const std::size_t bytes = block_bytes * static_cast<std::size_t>(size());
  std::byte* staged = staging_->grow(block_bytes + bytes);
  staging_->to_device(staged, send, block_bytes);
  device_.allgather(staged, staged + block_bytes, block_bytes);
  staging_->to_host(recv, staged + block_bytes, bytes);
}

template <class T>
void StagedCommunicator::reduce(std::span<T> data, ReduceOp op) {
  const std::size_t bytes = data.size_bytes();
  std::byte* staged = staging_->grow(bytes);
  staging_->to_device(staged, reinterpret_cast<const std::byte*>(data.data()), bytes);
  // grow() returns memory aligned for any scalar type, so the staged bytes are a valid T array.
  device_.allreduce(std::span<T>(reinterpret_cast<T*>(staged), data.size()), op);
  staging_->to_host(reinterpret_cast<std::byte*>(data.data()), staged, bytes);
}

void StagedCommunicator::allreduce(std::span<float> data, ReduceOp op) { reduce(data, op); }
void StagedCommunicator::allreduce(std::span<double> data, ReduceOp op) { reduce(data, op); }
void StagedCommunicator::allreduce(std::span<std::int64_t> data, ReduceOp op) { reduce(data, op); }

void StagedCommunicator::set_wait_mode(WaitMode mode) {
  device_.set_wait_mode(mode == WaitMode::spin ? DeviceCommunicator::WaitMode::spin
                                               : DeviceCommunicator::WaitMode::sleep);
}

}  // namespace moe::comm
