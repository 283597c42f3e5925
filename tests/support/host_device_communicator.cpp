#include "tests/support/host_device_communicator.hpp"

#include <algorithm>
#include <mutex>
#include <numeric>
#include <stdexcept>
#include <utility>

namespace moe::test {
namespace {

struct Region {
  const std::byte* data;
  std::size_t bytes;
};

// The memory of every live HostStagingMemory. Changes only when one grows or dies, so lookups on
// the steady path allocate nothing.
std::mutex regions_mutex;
std::vector<Region> regions;

void add_region(const std::byte* data, std::size_t bytes) {
  const std::lock_guard lock(regions_mutex);
  regions.push_back({data, bytes});
}

void remove_region(const std::byte* data) {
  const std::lock_guard lock(regions_mutex);
  std::erase_if(regions, [&](const Region& r) { return r.data == data; });
}

// Compared as addresses: `data` may belong to no region at all.
bool inside(const std::byte* first, std::size_t size, const void* data, std::size_t bytes) {
  const auto at = reinterpret_cast<std::uintptr_t>(data);
  const auto begin = reinterpret_cast<std::uintptr_t>(first);
  return at >= begin && at - begin <= size && bytes <= size - (at - begin);
}

// True when [data, data + bytes) lies inside staging memory of a live HostStagingMemory; always
// true for 0 bytes (nothing is read or written).
bool is_staged_memory(const void* data, std::size_t bytes) {
  if (bytes == 0) return true;
  const std::lock_guard lock(regions_mutex);
  return std::any_of(regions.begin(), regions.end(),
                     [&](const Region& r) { return inside(r.data, r.bytes, data, bytes); });
}

void require_staged(const void* data, std::size_t bytes, const char* what) {
  if (!is_staged_memory(data, bytes)) {
    throw std::logic_error(std::string("HostAsDeviceCommunicator::") + what +
                           ": a buffer that is not staging memory (host memory handed to a device "
                           "communicator)");
  }
}

std::size_t total(std::span<const std::size_t> bytes) {
  return std::accumulate(bytes.begin(), bytes.end(), std::size_t{0});
}

}  // namespace

HostStagingMemory::~HostStagingMemory() {
  if (!data_.empty()) remove_region(data_.data());
}

std::byte* HostStagingMemory::grow(std::size_t bytes) {
  if (bytes <= data_.size()) return data_.data();
  if (!data_.empty()) remove_region(data_.data());
  data_ = std::vector<std::byte>(bytes);
  ++allocations_;
  add_region(data_.data(), data_.size());
  return data_.data();
}

void HostStagingMemory::check_inside(const std::byte* device, std::size_t bytes, const char* what) const {
  if (bytes != 0 && !inside(data_.data(), data_.size(), device, bytes)) {
    throw std::logic_error(std::string("HostStagingMemory::") + what +
                           ": the device side is not inside this staging memory");
  }
}

void HostStagingMemory::to_device(std::byte* device, const std::byte* host, std::size_t bytes) {
  check_inside(device, bytes, "to_device");
  std::copy_n(host, bytes, device);
}

void HostStagingMemory::to_host(std::byte* host, const std::byte* device, std::size_t bytes) {
  check_inside(device, bytes, "to_host");
  std::copy_n(device, bytes, host);
}

std::unique_ptr<comm::StagingMemory> HostStagingMemory::make_another() const {
  return std::make_unique<HostStagingMemory>();
}

HostAsDeviceCommunicator::HostAsDeviceCommunicator(comm::Communicator& inner) : inner_(inner) {}

HostAsDeviceCommunicator::HostAsDeviceCommunicator(std::unique_ptr<comm::Communicator> inner)
    : owned_(std::move(inner)), inner_(*owned_) {}

std::unique_ptr<comm::DeviceCommunicator> HostAsDeviceCommunicator::split(int color, int key) const {
  std::unique_ptr<comm::Communicator> part = inner_.split(color, key);
  if (part == nullptr) return nullptr;
  return std::make_unique<HostAsDeviceCommunicator>(std::move(part));
}

void HostAsDeviceCommunicator::alltoallv(const std::byte* send, std::span<const std::size_t> send_bytes,
                                         std::byte* recv, std::span<const std::size_t> recv_bytes) {
  require_staged(send, total(send_bytes), "alltoallv");
  require_staged(recv, total(recv_bytes), "alltoallv");
  inner_.alltoallv(send, send_bytes, recv, recv_bytes);
}

void HostAsDeviceCommunicator::alltoall(const std::byte* send, std::byte* recv, std::size_t block_bytes) {
  const std::size_t bytes = block_bytes * static_cast<std::size_t>(size());
  require_staged(send, bytes, "alltoall");
  require_staged(recv, bytes, "alltoall");
  inner_.alltoall(send, recv, block_bytes);
}

void HostAsDeviceCommunicator::allgather(const std::byte* send, std::byte* recv, std::size_t block_bytes) {
  require_staged(send, block_bytes, "allgather");
  require_staged(recv, block_bytes * static_cast<std::size_t>(size()), "allgather");
  inner_.allgather(send, recv, block_bytes);
}

void HostAsDeviceCommunicator::allreduce(std::span<float> data, comm::ReduceOp op) {
  require_staged(data.data(), data.size_bytes(), "allreduce");
  inner_.allreduce(data, op);
}

void HostAsDeviceCommunicator::allreduce(std::span<double> data, comm::ReduceOp op) {
  require_staged(data.data(), data.size_bytes(), "allreduce");
  inner_.allreduce(data, op);
}

void HostAsDeviceCommunicator::allreduce(std::span<std::int64_t> data, comm::ReduceOp op) {
  require_staged(data.data(), data.size_bytes(), "allreduce");
  inner_.allreduce(data, op);
}

void HostAsDeviceCommunicator::set_wait_mode(WaitMode mode) {
  inner_.set_wait_mode(mode == WaitMode::spin ? comm::Communicator::WaitMode::spin
                                              : comm::Communicator::WaitMode::sleep);
}

}  // namespace moe::test
