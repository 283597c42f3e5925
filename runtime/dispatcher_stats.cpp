// The statistics of one forward (SPEC.md section 10, gathered by runtime/plan_statistics.hpp with
// the caller's own partial sums), and the automatic chunk count chosen from the first call's
// timings (runtime/auto_chunks.hpp).
#include "runtime/auto_chunks.hpp"
#include "runtime/dispatcher.hpp"

namespace moe {

void Dispatcher::reduce_statistics(DispatchContext& ctx, double exchange_seconds, std::span<double> group_sums) {
  ForwardStats& stats = ctx.stats_;
  const RankTraffic mine{.wire_row_bytes = static_cast<std::int64_t>(wire_row_bytes()),
                         .internode = internode_traffic(ctx),
                         .timings = {.exchange = exchange_seconds, .dispatch = stats.seconds(Phase::exchange),
                                     .back = stats.seconds(Phase::exchange_back),
                                     .experts = stats.seconds(Phase::experts)}};
  set_phase("statistics");
  const std::span<const ChunkTimings> ranks = statistics_.gather(comm_, ctx.plan_, mine, group_sums, stats);
  stats.exchange_seconds = exchange_seconds;

  if (auto_pending_) {
    // Chosen once, from the first call's gathered numbers (the same on every rank).
    auto_pending_ = false;
    std::int64_t kept = 0;
    for (auto n : stats.expert_kept) kept += n;
    // One chunk on this thread times the two exchanges apart; on the communication thread (or
    // the hierarchical exchange) the exchange phases are waits, not transfers.
    chunks_ = choose_auto_chunks({.ranks = ranks, .exchanges_timed_apart = !worker_ && !hierarchical_,
                                  .empty_exchange_seconds = empty_exchange_seconds_, .kept_rows = kept,
                                  .num_experts = config_.num_experts, .group_size = ep_size()});
    if (chunks_ > 1 && !worker_) start_worker();
  }
}

}  // namespace moe
