// The statistics of one forward (SPEC.md section 10), gathered in one allgather that can also carry
// the caller's own partial sums (the layer's loss terms), and the automatic chunk count chosen from
// the first call's timings.
#include <algorithm>
#include <cmath>

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
    // Every rank decides from the same gathered numbers, so all choose the same chunk count.
    double exchange = 1e30, dispatch = 1e30, back = 1e30, compute = 0;
    for (int r = 0; r < p_size; ++r) {
      const double* s = stat_all_.data() + r * width + scalars_at;
      exchange = std::min(exchange, s[exchange_s]);  // the rank that waited least: pure transfer
      dispatch = std::min(dispatch, s[dispatch_s]);
      back = std::min(back, s[return_s]);
      compute = std::max(compute, s[experts_s]);
    }
    // One chunk on this thread times the two exchanges apart. Each has a rank that arrived last
    // and so waited for nobody; but the rank that waited least in both together still waited in
    // the return for its slowest peer's experts. The least of each, summed, is the transfer.
    if (!worker_ && !hierarchical_) exchange = std::min(exchange, dispatch + back);
    choose_auto_chunks(exchange, compute, stats);
  }
}

// Pipelining C chunks costs about max(X, K) + min(X, K)/C + 2·C·λ for exchange time X, compute
// time K and fixed cost λ of one exchange; the best C is near sqrt(min(X, K) / (2λ)). Chunks are
// kept at 256 rows per expert GEMM or more, where the GEMMs still run near their peak. Chosen
// once, from the first call; a later run may choose differently when its timings differ, so a run
// that must be bitwise reproducible across runs sets a number.
void Dispatcher::choose_auto_chunks(double exchange, double compute, const ForwardStats& stats) {
  auto_pending_ = false;
  const double hidden = std::min(exchange, compute), longest = std::max(exchange, compute);
  int chunks = 1;
  if (hidden > 0.05 * longest) {
    const double best = std::sqrt(hidden / (2.0 * std::max(empty_exchange_seconds_, 1e-6)));
    std::int64_t kept = 0;
    for (auto n : stats.expert_kept) kept += n;
    const double rows_per_expert = static_cast<double>(kept) / static_cast<double>(config_.num_experts);
    const double local = static_cast<double>((config_.num_experts + ep_size() - 1) / ep_size());
    const double most = std::clamp(local * std::floor(rows_per_expert / 256.0), 1.0, 16.0);
    chunks = static_cast<int>(std::clamp(std::round(best), 1.0, most));
  }
  chunks_ = chunks;
  if (chunks_ > 1 && !worker_) start_worker();
}

}  // namespace moe
