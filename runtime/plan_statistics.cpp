#include "runtime/plan_statistics.hpp"

#include <algorithm>

namespace moe {

std::span<const ChunkTimings> PlanStatistics::gather(comm::Communicator& comm, const DispatchPlan& plan,
                                                     const RankTraffic& mine, std::span<double> group_sums,
                                                     ForwardStats& stats) {
  const std::int64_t num_experts = plan.num_experts;
  const int p_size = comm.size();
  const auto num_sums = static_cast<std::int64_t>(group_sums.size());
  // Layout per rank: counts[E], kept[E], the caller's sums, then the scalars below.
  enum Scalar { tokens, dropped_assignments, dropped_tokens, bytes_sent, internode_bytes,
                internode_messages, exchange_s, dispatch_s, return_s, experts_s, num_scalars };
  const std::int64_t scalars_at = 2 * num_experts + num_sums;
  const std::int64_t width = scalars_at + num_scalars;
  local_.resize(static_cast<std::size_t>(width));
  all_.resize(static_cast<std::size_t>(width * p_size));
  for (std::int64_t e = 0; e < num_experts; ++e) {
    local_[e] = static_cast<double>(plan.order_start[e + 1] - plan.order_start[e]);
    local_[num_experts + e] = static_cast<double>(plan.kept[e]);
  }
  std::copy(group_sums.begin(), group_sums.end(), local_.begin() + 2 * num_experts);
  double* scalars = local_.data() + scalars_at;
  scalars[tokens] = static_cast<double>(plan.num_tokens);
  scalars[dropped_assignments] = static_cast<double>(plan.dropped_assignments);
  scalars[dropped_tokens] = static_cast<double>(plan.dropped_tokens);
  // Rows a rank keeps for its own experts never cross the network and are not counted. What leaves
  // on the dispatch comes back on the return exchange, so sent equals received.
  const int me = comm.rank();
  const std::int64_t remote_rows = plan.num_send_rows() - plan.send_rows_to(me) +
                                   plan.num_recv_rows() - plan.recv_rows_from(me);
  scalars[bytes_sent] = static_cast<double>(remote_rows * mine.wire_row_bytes);
  scalars[internode_bytes] = static_cast<double>(mine.internode.bytes);
  scalars[internode_messages] = static_cast<double>(mine.internode.messages);
  scalars[exchange_s] = mine.timings.exchange;
  scalars[dispatch_s] = mine.timings.dispatch;
  scalars[return_s] = mine.timings.back;
  scalars[experts_s] = mine.timings.experts;
  comm.allgather(reinterpret_cast<const std::byte*>(local_.data()), reinterpret_cast<std::byte*>(all_.data()),
                 static_cast<std::size_t>(width) * sizeof(double));

  stats.expert_counts.assign(static_cast<std::size_t>(num_experts), 0);
  stats.expert_kept.assign(static_cast<std::size_t>(num_experts), 0);
  stats.rows_to_peer.resize(static_cast<std::size_t>(p_size));
  stats.rows_from_peer.resize(static_cast<std::size_t>(p_size));
  stats.bytes_sent.resize(static_cast<std::size_t>(p_size));
  stats.bytes_received.resize(static_cast<std::size_t>(p_size));
  stats.total_tokens = stats.dropped_assignments = stats.dropped_tokens = 0;
  stats.internode_bytes = stats.internode_messages = 0;
  std::fill(group_sums.begin(), group_sums.end(), 0.0);
  timings_.resize(static_cast<std::size_t>(p_size));
  for (int r = 0; r < p_size; ++r) {
    const auto p = static_cast<std::size_t>(r);
    stats.rows_to_peer[p] = plan.send_rows_to(r);
    stats.rows_from_peer[p] = plan.recv_rows_from(r);
    const double* row = all_.data() + r * width;
    for (std::int64_t e = 0; e < num_experts; ++e) {
      stats.expert_counts[e] += static_cast<std::int64_t>(row[e]);
      stats.expert_kept[e] += static_cast<std::int64_t>(row[num_experts + e]);
    }
    for (std::int64_t i = 0; i < num_sums; ++i) group_sums[static_cast<std::size_t>(i)] += row[2 * num_experts + i];
    const double* s = row + scalars_at;
    stats.total_tokens += static_cast<std::int64_t>(s[tokens]);
    stats.dropped_assignments += static_cast<std::int64_t>(s[dropped_assignments]);
    stats.dropped_tokens += static_cast<std::int64_t>(s[dropped_tokens]);
    stats.bytes_sent[p] = stats.bytes_received[p] = static_cast<std::int64_t>(s[bytes_sent]);
    stats.internode_bytes += static_cast<std::int64_t>(s[internode_bytes]);
    stats.internode_messages += static_cast<std::int64_t>(s[internode_messages]);
    timings_[p] = {.exchange = s[exchange_s], .dispatch = s[dispatch_s], .back = s[return_s],
                   .experts = s[experts_s]};
  }
  stats.set_load_spread();
  return timings_;
}

}  // namespace moe
