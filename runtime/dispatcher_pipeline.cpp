// The Dispatcher's pipelined passes: chunk after chunk goes out to the experts' ranks, the caller's
// expert function runs on each chunk as it arrives, and the results come back, while the next
// chunks travel on the communication thread (runtime/exchange_worker.hpp).
#include <chrono>

#include "runtime/dispatcher.hpp"
#include "runtime/error.hpp"
#include "runtime/local_failure.hpp"
#include "runtime/workspace.hpp"

namespace moe {
namespace {

using Clock = std::chrono::steady_clock;

}  // namespace

void Dispatcher::forward(DispatchContext& ctx, std::span<const float> x, std::span<float> y,
                         ExpertFunction experts, PhaseTimer& timer, InFlightWork in_flight,
                         std::span<double> group_sums) {
  const DispatchPlan& plan = ctx.plan_;
  if (!hierarchical_) gather_rows(plan, x, wire(send_wire_.data()));
  timer.lap(Phase::permute);
  const auto work = [&](int c) { forward_chunk(ctx, c, experts); };
  double exchange_seconds = 0;
  if (hierarchical_) {
    if (in_flight) in_flight();
    ctx.stats_.fill_seconds = 0;  // no pipeline
    exchange_seconds = run_hierarchical_forward(ctx, x, y, work, timer);
  } else {
    exchange_seconds = run_pipeline(ctx, send_wire_.data(), ctx.returned_.data(), work, timer,
                                    "dispatch", "return", ctx.stats_.fill_seconds, in_flight);
    combine_rows(plan, ctx.weight_, wire(ctx.returned_.data()), y);
  }
  timer.lap(Phase::combine);
  reduce_statistics(ctx, exchange_seconds, group_sums);
}

void Dispatcher::prepare_backward(DispatchContext& ctx, std::span<const float> dy,
                                  std::string local_error, FunctionRef<void()> reserve) {
  ++calls_;
  const DispatchPlan& plan = ctx.plan_;
  const std::int64_t d = config_.d_model;
  const auto expected = static_cast<std::size_t>(plan.num_tokens * d);
  if (local_error.empty() && dy.size() != expected) {
    local_error = "backward: dy must have " + std::to_string(expected) + " elements (the forward's " +
                  std::to_string(plan.num_tokens) + " tokens), got " + std::to_string(dy.size());
  }
  if (local_error.empty() && config_.check_finite) local_error = first_non_finite("grad_output", dy, d);
  if (local_error.empty()) {
    local_error = failure_of([&] {
      const auto row_bytes = static_cast<std::int64_t>(wire_row_bytes());
      grow(send_wire_, plan.num_send_rows() * row_bytes);
      grow(recv_wire_, plan.num_recv_rows() * row_bytes);
      grow(expert_rows_, plan.num_recv_rows() * d);
      grow(expert_grad_rows_, plan.num_recv_rows() * d);
      grow(d_weight_, plan.num_tokens * plan.top_k);
      if (hierarchical_) grow(row_values_, plan.num_send_rows());
      if (reserve) reserve();
    });
  }
  agree("backward: agree on inputs", local_error);
}

void Dispatcher::backward(DispatchContext& ctx, std::span<const float> dy, std::span<float> dx,
                          std::span<float> d_weight, ExpertFunction experts, PhaseTimer& timer,
                          InFlightWork in_flight) {
  const DispatchPlan& plan = ctx.plan_;
  const auto work = [&](int c) { backward_chunk(ctx, c, experts); };
  if (hierarchical_) {
    if (in_flight) in_flight();
    ctx.backward_fill_seconds_ = 0;  // no pipeline
    ctx.backward_exchange_seconds_ = run_hierarchical_backward(ctx, dy, dx, d_weight, work, timer);
    return;
  }
  combine_rows_backward(plan, ctx.weight_, wire(ctx.returned_.data()), dy, wire(send_wire_.data()), d_weight);
  zero_padding_rows(plan, wire(send_wire_.data()));
  timer.lap(Phase::combine);
  // The gradient of each expert output travels the dispatch route and the input gradient comes
  // back into the same buffer: chunk c's return lands where chunk c's dispatch already left.
  ctx.backward_exchange_seconds_ =
      run_pipeline(ctx, send_wire_.data(), send_wire_.data(), work, timer, "backward: gradients to experts",
                   "backward: gradients back", ctx.backward_fill_seconds_, in_flight);
  gather_rows_backward(plan, wire(send_wire_.data()), dx);
  timer.lap(Phase::permute);
}

void Dispatcher::forward_chunk(DispatchContext& ctx, int c, ExpertFunction experts) {
  const DispatchPlan& plan = ctx.plan_;
  const std::int64_t d = config_.d_model;
  const std::int64_t first = plan.chunk_recv_begin(c), count = plan.chunk_recv_rows(c);
  const WireRows received = wire(recv_wire_.data());
  to_expert_order(plan, c, received, ctx.expert_input_);
  experts({c, first, plan.chunk_expert_offsets(c), rows(ctx.expert_input_, first, count, d), {},
           rows(expert_rows_, first, count, d)});
  from_expert_order(plan, c, expert_rows_, received);
}

void Dispatcher::backward_chunk(DispatchContext& ctx, int c, ExpertFunction experts) {
  const DispatchPlan& plan = ctx.plan_;
  const std::int64_t d = config_.d_model;
  const std::int64_t first = plan.chunk_recv_begin(c), count = plan.chunk_recv_rows(c);
  const WireRows received = wire(recv_wire_.data());
  to_expert_order(plan, c, received, expert_grad_rows_);
  experts({c, first, plan.chunk_expert_offsets(c), rows(ctx.expert_input_, first, count, d),
           rows(expert_grad_rows_, first, count, d), rows(expert_rows_, first, count, d)});
  from_expert_order(plan, c, expert_rows_, received);
}

void Dispatcher::set_chunk_bytes(const DispatchPlan& plan) {
  const auto p_size = static_cast<std::size_t>(ep_size());
  const std::size_t row_bytes = wire_row_bytes();
  chunk_bytes_.resize(static_cast<std::size_t>(plan.num_chunks) * 2 * p_size);
  for (int c = 0; c < plan.num_chunks; ++c) {
    std::size_t* out = chunk_bytes_.data() + static_cast<std::size_t>(c) * 2 * p_size;
    for (int p = 0; p < ep_size(); ++p) {
      out[p] = static_cast<std::size_t>(plan.send_rows(c, p)) * row_bytes;
      out[p_size + static_cast<std::size_t>(p)] = static_cast<std::size_t>(plan.recv_rows(c, p)) * row_bytes;
    }
  }
}

std::span<const std::size_t> Dispatcher::chunk_out_bytes(int c) const {
  const auto p_size = static_cast<std::size_t>(ep_size());
  return std::span<const std::size_t>(chunk_bytes_).subspan(static_cast<std::size_t>(c) * 2 * p_size, p_size);
}

std::span<const std::size_t> Dispatcher::chunk_in_bytes(int c) const {
  const auto p_size = static_cast<std::size_t>(ep_size());
  return std::span<const std::size_t>(chunk_bytes_).subspan((static_cast<std::size_t>(c) * 2 + 1) * p_size, p_size);
}

// Sends chunk after chunk of `send` (send order) to the experts' ranks, runs `in_flight` (work
// that needs no remote rows) while the first chunk travels, runs `work` on each chunk as it
// arrives, and brings the results back into `returned` (send order). Returns the time spent in
// exchanges; sets `fill_seconds` to the wait for the first chunk.
double Dispatcher::run_pipeline(DispatchContext& ctx, const std::byte* send, std::byte* returned,
                                ChunkWork work, PhaseTimer& timer, const char* out_phase,
                                const char* back_phase, double& fill_seconds, InFlightWork in_flight) {
  const DispatchPlan& plan = ctx.plan_;
  const int chunks = plan.num_chunks;
  const std::size_t row_bytes = wire_row_bytes();
  std::byte* recv = recv_wire_.data();
  const comm::OperationContext out_context{config_.label.c_str(), calls_, out_phase};
  const comm::OperationContext back_context{config_.label.c_str(), calls_, back_phase};
  set_chunk_bytes(plan);
  const auto out_bytes = [&](int c) { return chunk_out_bytes(c); };
  const auto in_bytes = [&](int c) { return chunk_in_bytes(c); };
  const auto send_at = [&](int c) { return static_cast<std::size_t>(plan.chunk_send_begin(c)) * row_bytes; };
  const auto recv_at = [&](int c) { return static_cast<std::size_t>(plan.chunk_recv_begin(c)) * row_bytes; };

  if (!worker_) {
    // One chunk: the exchanges run here, nothing to overlap.
    if (in_flight) in_flight();
    const auto start = Clock::now();
    comm_.set_context(out_context);
    comm_.alltoallv(send, out_bytes(0), recv, in_bytes(0));
    const auto dispatched = Clock::now();
    fill_seconds = std::chrono::duration<double>(dispatched - start).count();
    timer.lap(Phase::exchange, 0);
    work(0);
    timer.lap(Phase::experts, 0);
    const auto back_start = Clock::now();
    comm_.set_context(back_context);
    comm_.alltoallv(recv, in_bytes(0), returned, out_bytes(0));
    timer.lap(Phase::exchange_back, 0);
    return std::chrono::duration<double>(dispatched - start).count() +
           std::chrono::duration<double>(Clock::now() - back_start).count();
  }

  // Every dispatch is queued first; chunk c is computed as soon as it has arrived and its results
  // are queued to go back. The worker runs the queue in order, the same order on every rank.
  worker_->reserve(static_cast<std::size_t>(2 * chunks));
  worker_->take_busy_seconds();
  tickets_.resize(static_cast<std::size_t>(2 * chunks));
  for (int c = 0; c < chunks; ++c) {
    tickets_[static_cast<std::size_t>(c)] =
        worker_->post({send + send_at(c), out_bytes(c), recv + recv_at(c), in_bytes(c), out_context, c});
  }
  if (in_flight) in_flight();
  for (int c = 0; c < chunks; ++c) {
    const auto waiting = Clock::now();
    worker_->wait(tickets_[static_cast<std::size_t>(c)]);
    if (c == 0) fill_seconds = std::chrono::duration<double>(Clock::now() - waiting).count();
    timer.lap(Phase::exchange, c);
    work(c);
    timer.lap(Phase::experts, c);
    tickets_[static_cast<std::size_t>(chunks + c)] =
        worker_->post({recv + recv_at(c), in_bytes(c), returned + send_at(c), out_bytes(c), back_context, c});
  }
  for (int c = 0; c < chunks; ++c) worker_->wait(tickets_[static_cast<std::size_t>(chunks + c)]);
  timer.lap(Phase::exchange_back);
  return worker_->take_busy_seconds();
}

}  // namespace moe
