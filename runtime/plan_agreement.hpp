// What the ranks of one expert-parallel group agree on before any row moves, written once for the
// two places that move rows: the Dispatcher (runtime/dispatcher.hpp, under MoeLayer) and the
// device layer (runtime/device/device_layer.hpp). Once, at construction: that every rank holds the
// same configuration. For every batch: the dispatch plan (SPEC.md section 4), that is capacity and
// drops, then what each rank receives, learned from the count exchange (variable and hierarchical
// exchanges), from one small all-reduce of the slot count (padded), or from the global capacity
// decision. A rank's local error travels with these collectives, so every rank raises the same
// moe::Error and none enters the payload exchange alone; the common path pays no extra collective.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "comm/communicator.hpp"
#include "runtime/config.hpp"
#include "runtime/dispatch_io.hpp"
#include "runtime/dispatch_plan.hpp"
#include "runtime/global_capacity.hpp"

namespace moe {

// Collective over `comm`: if the ranks hold different configurations, every rank throws the same
// moe::Error naming the fields that differ, each value with the ranks that hold it.
void agree_on_config(comm::Communicator& comm, const MoeConfig& config);

// The per-batch agreement, with the workspace it reuses (nothing allocates once batches stop
// growing).
class PlanAgreement {
 public:
  // Names the collective about to start, for the watchdog's diagnostic (optional).
  using PhaseNamer = FunctionRef<void(const char*)>;

  // Collective over `comm`. Ranks this rank's assignments in `routing`, decides capacity and drops
  // (over the group with capacity_scope = global) and builds `plan` in `chunks` chunks, complete
  // with what this rank receives. If any rank passes a `local_error` or fails before the
  // agreement, every rank throws the same moe::Error. Returns a failure met after the agreement
  // ("" for none), which the caller's next agreement must report. `count_exchange_seconds` is set
  // to the time spent in the agreement's collectives.
  std::string agree(comm::Communicator& comm, const MoeConfig& config, int chunks, const Routing& routing,
                    std::string local_error, DispatchPlan& plan, double& count_exchange_seconds,
                    PhaseNamer phase = {});

 private:
  GlobalCapacity global_capacity_;
  std::vector<std::int64_t> count_send_, count_recv_, recv_counts_;
};

}  // namespace moe
