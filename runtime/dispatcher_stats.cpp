// The statistics of one forward (SPEC.md section 10), gathered in one allgather that can also carry
// the caller's own partial sums (the layer's loss terms), and the automatic chunk count chosen from
// the first call's timings (runtime/auto_chunks.hpp).
#include <algorithm>
#include <vector>

#include "runtime/auto_chunks.hpp"
#include "runtime/dispatcher.hpp"

namespace moe {

// Each rank adds the gathered partial sums in rank order, so the counts and the caller's sums are
// bitwise identical on every rank and on every run.
void Dispatcher::reduce_statistics(DispatchContext& ctx, double exchange_seconds, std::span<double> group_sums) {
  const DispatchPlan& plan = ctx.plan_;
  const std::int64_t num_experts = config_.num_experts;
  const int p_size = ep_size();
  const auto num_sums = static_cast<std::int64_t>(group_sums.size());
  // What really crosses the network: rows in the wire format.
  const auto row_bytes = static_cast<std::int64_t>(wire_row_bytes());
  // Layout per rank: counts[E], kept[E], the caller's sums, then the scalars below.
  enum Scalar { tokens, dropped_assignments, dropped_tokens, bytes_sent, bytes_received,
                internode_bytes, internode_messages, exchange_s, dispatch_s, return_s, experts_s,
                num_scalars };
  const std::int64_t scalars_at = 2 * num_experts + num_sums;
  const std::int64_t width = scalars_at + num_scalars;
  stat_local_.resize(static_cast<std::size_t>(width));
  stat_all_.resize(static_cast<std::size_t>(width * p_size));
  for (std::int64_t e = 0; e < num_experts; ++e) {
    stat_local_[e] = static_cast<double>(plan.order_start[e + 1] - plan.order_start[e]);
    stat_local_[num_experts + e] = static_cast<double>(plan.kept[e]);
  }
  std::copy(group_sums.begin(), group_sums.end(), stat_local_.begin() + 2 * num_experts);
  double* scalars = stat_local_.data() + scalars_at;
  scalars[tokens] = static_cast<double>(plan.num_tokens);
  scalars[dropped_assignments] = static_cast<double>(plan.dropped_assignments);
  scalars[dropped_tokens] = static_cast<double>(plan.dropped_tokens);
  // Rows a rank keeps for its own experts never cross the network and are not counted. What leaves
  // on the dispatch comes back on the return exchange, so sent equals received.
  const int me = ep_rank();
  const std::int64_t remote_rows = plan.num_send_rows() - plan.send_rows_to(me) +
                                   plan.num_recv_rows() - plan.recv_rows_from(me);
  scalars[bytes_sent] = static_cast<double>(remote_rows * row_bytes);
  scalars[bytes_received] = scalars[bytes_sent];
  const comm::InterNodeTraffic internode = internode_traffic(ctx);
  scalars[internode_bytes] = static_cast<double>(internode.bytes);
  scalars[internode_messages] = static_cast<double>(internode.messages);
  scalars[exchange_s] = exchange_seconds;
  scalars[dispatch_s] = ctx.stats_.seconds(Phase::exchange);
  scalars[return_s] = ctx.stats_.seconds(Phase::exchange_back);
  scalars[experts_s] = ctx.stats_.seconds(Phase::experts);
  set_phase("statistics");
  comm_.allgather(reinterpret_cast<const std::byte*>(stat_local_.data()),
                  reinterpret_cast<std::byte*>(stat_all_.data()),
                  static_cast<std::size_t>(width) * sizeof(double));

  ForwardStats& stats = ctx.stats_;
  stats.expert_counts.assign(static_cast<std::size_t>(num_experts), 0);
  stats.expert_kept.assign(static_cast<std::size_t>(num_experts), 0);
  stats.rows_to_peer.resize(static_cast<std::size_t>(p_size));
  stats.rows_from_peer.resize(static_cast<std::size_t>(p_size));
  for (int p = 0; p < p_size; ++p) {
    stats.rows_to_peer[static_cast<std::size_t>(p)] = plan.send_rows_to(p);
    stats.rows_from_peer[static_cast<std::size_t>(p)] = plan.recv_rows_from(p);
  }
  stats.bytes_sent.resize(static_cast<std::size_t>(p_size));
  stats.bytes_received.resize(static_cast<std::size_t>(p_size));
  stats.total_tokens = stats.dropped_assignments = stats.dropped_tokens = 0;
  stats.internode_bytes = stats.internode_messages = 0;
  std::fill(group_sums.begin(), group_sums.end(), 0.0);
  for (int r = 0; r < p_size; ++r) {
    const double* row = stat_all_.data() + r * width;
    for (std::int64_t e = 0; e < num_experts; ++e) {
      stats.expert_counts[e] += static_cast<std::int64_t>(row[e]);
      stats.expert_kept[e] += static_cast<std::int64_t>(row[num_experts + e]);
    }
    for (std::int64_t i = 0; i < num_sums; ++i) group_sums[static_cast<std::size_t>(i)] += row[2 * num_experts + i];
    const double* s = row + scalars_at;
    stats.total_tokens += static_cast<std::int64_t>(s[tokens]);
    stats.dropped_assignments += static_cast<std::int64_t>(s[dropped_assignments]);
    stats.dropped_tokens += static_cast<std::int64_t>(s[dropped_tokens]);
    stats.bytes_sent[r] = static_cast<std::int64_t>(s[bytes_sent]);
    stats.bytes_received[r] = static_cast<std::int64_t>(s[bytes_received]);
    stats.internode_bytes += static_cast<std::int64_t>(s[internode_bytes]);
    stats.internode_messages += static_cast<std::int64_t>(s[internode_messages]);
  }
  stats.exchange_seconds = exchange_seconds;
  stats.set_load_spread();

  if (auto_pending_) {
    // Chosen once, from the first call's gathered numbers (the same on every rank).
    auto_pending_ = false;
    std::vector<ChunkTimings> ranks(static_cast<std::size_t>(p_size));
    for (int r = 0; r < p_size; ++r) {
      const double* s = stat_all_.data() + r * width + scalars_at;
      ranks[static_cast<std::size_t>(r)] = {.exchange = s[exchange_s], .dispatch = s[dispatch_s],
                                            .back = s[return_s], .experts = s[experts_s]};
    }
    std::int64_t kept = 0;
    for (auto n : stats.expert_kept) kept += n;
    // One chunk on this thread times the two exchanges apart; on the communication thread (or
    // the hierarchical exchange) the exchange phases are waits, not transfers.
    chunks_ = choose_auto_chunks({.ranks = ranks, .exchanges_timed_apart = !worker_ && !hierarchical_,
                                  .empty_exchange_seconds = empty_exchange_seconds_, .kept_rows = kept,
                                  .num_experts = num_experts, .group_size = p_size});
    if (chunks_ > 1 && !worker_) start_worker();
  }
}

}  // namespace moe
