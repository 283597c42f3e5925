// The Dispatcher's passes over the hierarchical exchange (comm/hierarchical_exchange.hpp): the same
// plan, the same expert work on the same receive layout as the flat exchange; only the way rows
// travel and where the weighted sums are taken differ.
#include <chrono>

#include "runtime/dispatcher.hpp"

namespace moe {
namespace {

using Clock = std::chrono::steady_clock;

double since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

}  // namespace

std::span<float> Dispatcher::received_floats(const DispatchContext& ctx) {
  // One chunk in fp32 (the exchange field's rule), so the wire buffer holds plain floats.
  return {reinterpret_cast<float*>(recv_wire_.data()),
          static_cast<std::size_t>(ctx.plan_.num_recv_rows() * config_.d_model)};
}

// Each of the four steps returns the time it spent exchanging.
double Dispatcher::hierarchical_dispatch(DispatchContext& ctx, std::span<const float> x) {
  const DispatchPlan& plan = ctx.plan_;
  const int p_size = ep_size();
  const std::int64_t rows = plan.num_send_rows();
  // Each send row's weight: the relay on the destination node takes the weighted sum.
  for (std::int64_t a = 0; a < plan.num_tokens * plan.top_k; ++a) {
    const std::int64_t row = plan.send_row[static_cast<std::size_t>(a)];
    if (row >= 0) row_values_[static_cast<std::size_t>(row)] = ctx.weight_[static_cast<std::size_t>(a)];
  }
  peer_rows_.resize(static_cast<std::size_t>(2 * p_size));
  for (int p = 0; p < p_size; ++p) {
    peer_rows_[static_cast<std::size_t>(p)] = plan.send_rows(0, p);
    peer_rows_[static_cast<std::size_t>(p_size + p)] = plan.recv_rows(0, p);
  }
  const std::span<const std::int64_t> to(peer_rows_.data(), static_cast<std::size_t>(p_size));
  const std::span<const std::int64_t> from(peer_rows_.data() + p_size, static_cast<std::size_t>(p_size));
  const auto start = Clock::now();
  hierarchical_->set_context({config_.label.c_str(), calls_, "dispatch"});
  hierarchical_->dispatch(ctx.route_, x, to, std::span<const std::int64_t>(plan.send_token).first(static_cast<std::size_t>(rows)),
                          std::span<const float>(row_values_).first(static_cast<std::size_t>(rows)), from,
                          received_floats(ctx));
  return since(start);
}

double Dispatcher::hierarchical_combine(DispatchContext& ctx, std::span<float> y) {
  const auto start = Clock::now();
  hierarchical_->set_context({config_.label.c_str(), calls_, "return"});
  hierarchical_->combine(ctx.route_, received_floats(ctx), y);
  return since(start);
}

double Dispatcher::hierarchical_dispatch_gradient(DispatchContext& ctx, std::span<const float> dy) {
  const auto start = Clock::now();
  hierarchical_->set_context({config_.label.c_str(), calls_, "backward: gradients to experts"});
  hierarchical_->dispatch_gradient(ctx.route_, dy, received_floats(ctx));
  return since(start);
}

double Dispatcher::hierarchical_combine_gradient(DispatchContext& ctx, std::span<float> dx,
                                                 std::span<float> d_weight) {
  const DispatchPlan& plan = ctx.plan_;
  const auto start = Clock::now();
  hierarchical_->set_context({config_.label.c_str(), calls_, "backward: gradients back"});
  const std::span<float> row_dot = std::span<float>(row_values_).first(static_cast<std::size_t>(plan.num_send_rows()));
  hierarchical_->combine_gradient(ctx.route_, received_floats(ctx), dx, row_dot);
  const double seconds = since(start);
  // The weights' gradients, dy · output of each kept assignment (zero for a dropped one).
  for (std::int64_t a = 0; a < plan.num_tokens * plan.top_k; ++a) {
    const std::int64_t row = plan.send_row[static_cast<std::size_t>(a)];
    d_weight[static_cast<std::size_t>(a)] = row >= 0 ? row_dot[static_cast<std::size_t>(row)] : 0.0f;
  }
  return seconds;
}

double Dispatcher::run_hierarchical_forward(DispatchContext& ctx, std::span<const float> x,
                                            std::span<float> y, ChunkWork work, PhaseTimer& timer) {
  double seconds = hierarchical_dispatch(ctx, x);
  timer.lap(Phase::exchange);
  work(0);
  timer.lap(Phase::experts);
  seconds += hierarchical_combine(ctx, y);
  timer.lap(Phase::exchange_back);
  return seconds;
}

double Dispatcher::run_hierarchical_backward(DispatchContext& ctx, std::span<const float> dy,
                                             std::span<float> dx, std::span<float> d_weight,
                                             ChunkWork work, PhaseTimer& timer) {
  double seconds = hierarchical_dispatch_gradient(ctx, dy);
  timer.lap(Phase::exchange);
  work(0);
  timer.lap(Phase::experts);
  seconds += hierarchical_combine_gradient(ctx, dx, d_weight);
  timer.lap(Phase::exchange_back);
  return seconds;
}

comm::InterNodeTraffic Dispatcher::internode_traffic(const DispatchContext& ctx) const {
  if (hierarchical_) return hierarchical_->forward_traffic();
  // Flat: every block to or from a rank on another node crosses, there and back.
  const DispatchPlan& plan = ctx.plan_;
  const auto row_bytes = static_cast<std::int64_t>(wire_row_bytes());
  const int node = topology_.node_of(ep_rank());
  comm::InterNodeTraffic traffic;
  for (int c = 0; c < plan.num_chunks; ++c) {
    for (int p = 0; p < ep_size(); ++p) {
      if (topology_.node_of(p) == node) continue;
      for (const std::int64_t rows : {plan.send_rows(c, p), plan.recv_rows(c, p)}) {
        traffic.bytes += rows * row_bytes;
        traffic.messages += rows > 0 ? 1 : 0;
      }
    }
  }
  return traffic;
}

}  // namespace moe
