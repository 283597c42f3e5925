// The device path's exchanges (CUDA builds): chunk c of the dispatch plan over NCCL's grouped
// send/recv (NcclCommunicator::alltoallv), on device rows, ordered against the compute stream by
// OverlapStreams' events. The NCCL communicator is created from MPI (MPI only carries the NCCL
// unique id) and watches every exchange with its watchdog (ncclCommGetAsyncError, ncclCommAbort;
// comm/nccl_communicator.hpp), which reports like the MPI one.
//
// Each call returns when the chunk has been exchanged (the communicator's blocking contract);
// work already enqueued on the compute stream (the previous chunk's experts) keeps running on the
// GPU meanwhile, which is the overlap. No allocation after construction.
#pragma once

#include <cstddef>
#include <vector>

#include "comm/nccl_communicator.hpp"
#include "runtime/device/overlap_streams.hpp"
#include "runtime/dispatch_plan.hpp"

namespace moe::device {

class DeviceExchange {
 public:
  // `streams.comm()` must be `comm.stream()`.
  DeviceExchange(comm::NcclCommunicator& comm, OverlapStreams& streams);

  // Out: chunk c's rows from send order (`send`, the whole send buffer) to receive order
  // (`recv`, the whole receive buffer), once the compute stream has reached the caller's
  // streams.packed(c); records streams.arrived(c).
  void dispatch(const DispatchPlan& plan, int c, const std::byte* send, std::byte* recv,
                std::size_t row_bytes);
  // Back: chunk c's expert outputs from receive order to send order (`back`), likewise after
  // the caller's streams.packed(c) (recorded once they are computed); records streams.arrived(c).
  void combine(const DispatchPlan& plan, int c, const std::byte* recv, std::byte* back,
               std::size_t row_bytes);

 private:
  comm::NcclCommunicator& comm_;
  OverlapStreams& streams_;
  std::vector<std::size_t> to_peer_, from_peer_;
};

}  // namespace moe::device
