// The Dispatcher's split passes: one exchange per call, the caller's experts computing in between
// on the whole batch (every chunk's rows at once). The same plan, layouts and exchanges as the
// pipelined passes, without the overlap.
#include <algorithm>
#include <chrono>
#include <string>

#include "runtime/dispatcher.hpp"
#include "runtime/error.hpp"
#include "runtime/local_failure.hpp"

namespace moe {
namespace {

using Clock = std::chrono::steady_clock;

double since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

std::string first_of(std::initializer_list<std::string> problems) {
  for (const auto& p : problems) {
    if (!p.empty()) return p;
  }
  return {};
}

}  // namespace

double Dispatcher::exchange_chunks(const DispatchPlan& plan, const std::byte* from, std::byte* to,
                                   bool outward, const char* phase) {
  set_chunk_bytes(plan);
  const std::size_t row_bytes = wire_row_bytes();
  comm_.set_context({config_.label.c_str(), calls_, phase});
  const auto start = Clock::now();
  for (int c = 0; c < plan.num_chunks; ++c) {
    const std::size_t send_at = static_cast<std::size_t>(plan.chunk_send_begin(c)) * row_bytes;
    const std::size_t recv_at = static_cast<std::size_t>(plan.chunk_recv_begin(c)) * row_bytes;
    if (outward) {
      comm_.alltoallv(from + send_at, chunk_out_bytes(c), to + recv_at, chunk_in_bytes(c));
    } else {
      comm_.alltoallv(from + recv_at, chunk_in_bytes(c), to + send_at, chunk_out_bytes(c));
    }
  }
  return since(start);
}

std::span<const float> Dispatcher::dispatch(DispatchContext& ctx, std::span<const float> x) {
  const DispatchPlan& plan = ctx.plan_;
  agree("dispatch: agree on inputs", size_problem("dispatch", "x", x, plan.num_tokens, config_.d_model));
  PhaseTimer timer(ctx.stats_.phase_seconds, "forward");
  const WireRows received = wire(recv_wire_.data());
  ctx.stats_.fill_seconds = 0;  // no pipeline
  if (hierarchical_) {
    ctx.split_exchange_seconds_ = hierarchical_dispatch(ctx, x);
  } else {
    gather_rows(plan, x, wire(send_wire_.data()));
    timer.lap(Phase::permute);
    ctx.split_exchange_seconds_ = exchange_chunks(plan, send_wire_.data(), recv_wire_.data(), true, "dispatch");
  }
  timer.lap(Phase::exchange);
  for (int c = 0; c < plan.num_chunks; ++c) to_expert_order(plan, c, received, ctx.expert_input_);
  timer.lap(Phase::permute);
  ctx.dispatched_at_ = Clock::now();
  return ctx.expert_rows();
}

void Dispatcher::combine(DispatchContext& ctx, std::span<const float> expert_output, std::span<float> y,
                         std::span<double> group_sums) {
  const DispatchPlan& plan = ctx.plan_;
  const std::int64_t d = config_.d_model;
  agree("combine: agree on inputs",
        first_of({size_problem("combine", "expert_output", expert_output, plan.num_recv_rows(), d),
                  size_problem("combine", "y", y, plan.num_tokens, d)}));
  ctx.stats_.seconds(Phase::experts) += since(ctx.dispatched_at_);
  PhaseTimer timer(ctx.stats_.phase_seconds, "forward", false);
  const WireRows received = wire(recv_wire_.data());
  for (int c = 0; c < plan.num_chunks; ++c) from_expert_order(plan, c, expert_output, received);
  timer.lap(Phase::permute);
  double seconds = ctx.split_exchange_seconds_;
  if (hierarchical_) {
    seconds += hierarchical_combine(ctx, y);
    timer.lap(Phase::exchange_back);
  } else {
    seconds += exchange_chunks(plan, recv_wire_.data(), ctx.returned_.data(), false, "return");
    timer.lap(Phase::exchange_back);
    combine_rows(plan, ctx.weight_, wire(ctx.returned_.data()), y);
    timer.lap(Phase::combine);
  }
  reduce_statistics(ctx, seconds, group_sums);
}

std::span<const float> Dispatcher::dispatch_backward(DispatchContext& ctx, std::span<const float> dy) {
  const DispatchPlan& plan = ctx.plan_;
  prepare_backward(ctx, dy);
  PhaseTimer timer(ctx.backward_seconds_, "backward");
  ctx.backward_fill_seconds_ = 0;  // no pipeline
  if (hierarchical_) {
    ctx.backward_exchange_seconds_ = hierarchical_dispatch_gradient(ctx, dy);
  } else {
    combine_rows_backward(plan, ctx.weight_, wire(ctx.returned_.data()), dy, wire(send_wire_.data()), d_weight_);
    zero_padding_rows(plan, wire(send_wire_.data()));
    timer.lap(Phase::combine);
    ctx.backward_exchange_seconds_ = exchange_chunks(plan, send_wire_.data(), recv_wire_.data(), true,
                                                     "backward: gradients to experts");
  }
  timer.lap(Phase::exchange);
  const WireRows received = wire(recv_wire_.data());
  for (int c = 0; c < plan.num_chunks; ++c) to_expert_order(plan, c, received, expert_grad_rows_);
  timer.lap(Phase::permute);
  ctx.dispatched_at_ = Clock::now();
  return std::span<const float>(expert_grad_rows_).first(static_cast<std::size_t>(plan.num_recv_rows() * config_.d_model));
}

void Dispatcher::combine_backward(DispatchContext& ctx, std::span<const float> grad_rows,
                                  std::span<float> dx, std::span<float> d_weight) {
  const DispatchPlan& plan = ctx.plan_;
  const std::int64_t d = config_.d_model;
  agree("backward: agree on gradients",
        first_of({size_problem("combine_backward", "grad_rows", grad_rows, plan.num_recv_rows(), d),
                  size_problem("combine_backward", "dx", dx, plan.num_tokens, d),
                  size_problem("combine_backward", "d_weight", d_weight, plan.num_tokens, plan.top_k)}));
  ctx.backward_seconds_[static_cast<std::size_t>(Phase::experts)] += since(ctx.dispatched_at_);
  PhaseTimer timer(ctx.backward_seconds_, "backward", false);
  const WireRows received = wire(recv_wire_.data());
  for (int c = 0; c < plan.num_chunks; ++c) from_expert_order(plan, c, grad_rows, received);
  timer.lap(Phase::permute);
  if (hierarchical_) {
    ctx.backward_exchange_seconds_ += hierarchical_combine_gradient(ctx, dx, d_weight);
    timer.lap(Phase::exchange_back);
    return;
  }
  ctx.backward_exchange_seconds_ += exchange_chunks(plan, recv_wire_.data(), send_wire_.data(), false,
                                                    "backward: gradients back");
  timer.lap(Phase::exchange_back);
  gather_rows_backward(plan, wire(send_wire_.data()), dx);
  std::copy_n(d_weight_.begin(), plan.num_tokens * plan.top_k, d_weight.begin());
  timer.lap(Phase::permute);
}

}  // namespace moe
