// The statistics of one forward (SPEC.md section 10) from every rank's dispatch plan, gathered in
// one allgather that also carries the caller's partial sums (the layer's loss terms) and each
// rank's timings for overlap_chunks = auto (runtime/auto_chunks.hpp). Written once for the two
// places that run a plan: the Dispatcher (runtime/dispatcher.hpp) and the device layer
// (runtime/device/device_layer.hpp). Each rank adds the gathered values in rank order, so counts
// and sums are bitwise identical on every rank and on every run.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "comm/communicator.hpp"
#include "comm/hierarchical_exchange.hpp"
#include "runtime/auto_chunks.hpp"
#include "runtime/dispatch_plan.hpp"
#include "runtime/stats.hpp"

namespace moe {

// What a rank adds to the plan's own numbers.
struct RankTraffic {
  std::int64_t wire_row_bytes = 0;   // bytes of one row as it crosses the network
  comm::InterNodeTraffic internode;  // this rank's bytes and messages between nodes
  ChunkTimings timings;              // the first forward's, for overlap_chunks = auto
};

// With the workspace it reuses (nothing allocates once the group and expert counts are fixed).
class PlanStatistics {
 public:
  // Collective over `comm`. Sets `stats`' counts, kept rows, totals, drops, rows and bytes per peer,
  // inter-node traffic and load spread; `group_sums` goes in as this rank's values and comes out
  // as their sums over the group. Returns every rank's timings in rank order (valid until the next
  // call).
  std::span<const ChunkTimings> gather(comm::Communicator& comm, const DispatchPlan& plan,
                                       const RankTraffic& mine, std::span<double> group_sums,
                                       ForwardStats& stats);

 private:
  std::vector<double> local_, all_;
  std::vector<ChunkTimings> timings_;
};

}  // namespace moe
