#include "runtime/device/device_exchange.hpp"

#include <stdexcept>

#include "runtime/device/exchange_bytes.hpp"

namespace moe::device {

DeviceExchange::DeviceExchange(comm::NcclCommunicator& comm, OverlapStreams& streams)
    : comm_(comm),
      streams_(streams),
      to_peer_(static_cast<std::size_t>(comm.size())),
      from_peer_(static_cast<std::size_t>(comm.size())) {
  if (streams.comm() != comm.stream()) {
    throw std::invalid_argument("moe-ep: DeviceExchange: the overlap's communication stream is not the NCCL communicator's");
  }
}

void DeviceExchange::dispatch(const DispatchPlan& plan, int c, const std::byte* send,
                              std::byte* recv, std::size_t row_bytes) {
  chunk_exchange_bytes(plan, c, row_bytes, to_peer_, from_peer_);
  streams_.exchange_after_packing(c);
  comm_.alltoallv(send + static_cast<std::size_t>(plan.chunk_send_begin(c)) * row_bytes, to_peer_,
                  recv + static_cast<std::size_t>(plan.chunk_recv_begin(c)) * row_bytes, from_peer_);
  streams_.arrived(c);
}

void DeviceExchange::combine(const DispatchPlan& plan, int c, const std::byte* recv,
                             std::byte* back, std::size_t row_bytes) {
  chunk_exchange_bytes(plan, c, row_bytes, to_peer_, from_peer_);
  streams_.exchange_after_packing(c);
  comm_.alltoallv(recv + static_cast<std::size_t>(plan.chunk_recv_begin(c)) * row_bytes, from_peer_,
                  back + static_cast<std::size_t>(plan.chunk_send_begin(c)) * row_bytes, to_peer_);
  streams_.arrived(c);
}

}  // namespace moe::device
