// MoeLayer's passes over the hierarchical exchange (comm/hierarchical_exchange.hpp): the same plan,
// the same expert work on the same receive layout as the flat exchange; only the way rows travel
// and where the weighted sums are taken differ.
#include <chrono>

#include "runtime/moe_layer.hpp"

namespace moe {
namespace {

using Clock = std::chrono::steady_clock;

double since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

}  // namespace

double MoeLayer::run_hierarchical_forward(ForwardContext& ctx, std::span<const float> x,
                                          std::span<float> y, PhaseTimer& timer) {
  const DispatchPlan& plan = ctx.plan_;
  const int p_size = ep_size();
  const std::int64_t rows = plan.num_send_rows();
  // Each send row's weight: the relay on the destination node takes the weighted sum.
  for (std::int64_t a = 0; a < plan.num_tokens * plan.top_k; ++a) {
    const std::int64_t row = plan.send_row[static_cast<std::size_t>(a)];
    if (row >= 0) row_values_[static_cast<std::size_t>(row)] = ctx.router_.weight[static_cast<std::size_t>(a)];
  }
  peer_rows_.resize(static_cast<std::size_t>(2 * p_size));
  for (int p = 0; p < p_size; ++p) {
    peer_rows_[static_cast<std::size_t>(p)] = plan.send_rows(0, p);
    peer_rows_[static_cast<std::size_t>(p_size + p)] = plan.recv_rows(0, p);
  }
  const std::span<const std::int64_t> to(peer_rows_.data(), static_cast<std::size_t>(p_size));
  const std::span<const std::int64_t> from(peer_rows_.data() + p_size, static_cast<std::size_t>(p_size));
  // One chunk in fp32 (the exchange field's rule), so the wire buffer holds plain floats.
  const std::span<float> received(reinterpret_cast<float*>(recv_wire_.data()),
                                  static_cast<std::size_t>(plan.num_recv_rows() * config_.d_model));

  const auto start = Clock::now();
  hierarchical_->set_context({config_.label.c_str(), calls_, "dispatch"});
  hierarchical_->dispatch(ctx.route_, x, to, std::span<const std::int64_t>(plan.send_token).first(static_cast<std::size_t>(rows)),
                          std::span<const float>(row_values_).first(static_cast<std::size_t>(rows)), from, received);
  const double dispatch_seconds = since(start);
  timer.lap(Phase::exchange);
  forward_chunk(*this, ctx, 0);
  timer.lap(Phase::experts);
  const auto back_start = Clock::now();
  hierarchical_->set_context({config_.label.c_str(), calls_, "return"});
  hierarchical_->combine(ctx.route_, received, y);
  timer.lap(Phase::exchange_back);
  return dispatch_seconds + since(back_start);
}

double MoeLayer::run_hierarchical_backward(ForwardContext& ctx, std::span<const float> dy,
                                           std::span<float> dx, PhaseTimer& timer) {
  const DispatchPlan& plan = ctx.plan_;
  const std::span<float> received(reinterpret_cast<float*>(recv_wire_.data()),
                                  static_cast<std::size_t>(plan.num_recv_rows() * config_.d_model));
  const auto start = Clock::now();
  hierarchical_->set_context({config_.label.c_str(), calls_, "backward: gradients to experts"});
  hierarchical_->dispatch_gradient(ctx.route_, dy, received);
  const double dispatch_seconds = since(start);
  timer.lap(Phase::exchange);
  backward_chunk(*this, ctx, 0);
  timer.lap(Phase::experts);
  const auto back_start = Clock::now();
  hierarchical_->set_context({config_.label.c_str(), calls_, "backward: gradients back"});
  const std::span<float> row_dot = std::span<float>(row_values_).first(static_cast<std::size_t>(plan.num_send_rows()));
  hierarchical_->combine_gradient(ctx.route_, received, dx, row_dot);
  const double exchange_seconds = dispatch_seconds + since(back_start);
  timer.lap(Phase::exchange_back);
  // The weights' gradients, dy · output of each kept assignment (zero for a dropped one).
  for (std::int64_t a = 0; a < plan.num_tokens * plan.top_k; ++a) {
    const std::int64_t row = plan.send_row[static_cast<std::size_t>(a)];
    d_weight_[static_cast<std::size_t>(a)] = row >= 0 ? row_dot[static_cast<std::size_t>(row)] : 0.0f;
  }
  timer.lap(Phase::combine);
  return exchange_seconds;
}

comm::InterNodeTraffic MoeLayer::internode_traffic(const ForwardContext& ctx) const {
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
