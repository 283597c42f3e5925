// The Dispatcher's construction and its plan. The plan and the agreement on what moves (capacity
// and drops, the count exchange, the padded slot count or the global capacity decision, where a
// local error is raised by every rank) are runtime/plan_agreement.hpp's, shared with the device
// layer; here the caller's routing is checked and the receive side grown.
#include "runtime/dispatcher.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <string>

#include "runtime/error.hpp"
#include "runtime/local_failure.hpp"
#include "runtime/workspace.hpp"

namespace moe {
namespace {

using Clock = std::chrono::steady_clock;

// What is wrong with a routing of `num_tokens` tokens for this configuration, or "".
std::string routing_problem(const MoeConfig& config, const Routing& routing) {
  const std::int64_t k = config.top_k;
  const auto expected = static_cast<std::size_t>(routing.num_tokens * k);
  if (routing.num_tokens < 0) return "routing: negative token count " + std::to_string(routing.num_tokens);
  if (routing.experts.size() != expected || routing.weights.size() != expected) {
    return "routing: experts and weights must each have num_tokens*top_k = " + std::to_string(expected) +
           " entries, got " + std::to_string(routing.experts.size()) + " and " +
           std::to_string(routing.weights.size());
  }
  for (std::size_t a = 0; a < expected; ++a) {
    const std::int32_t e = routing.experts[a];
    if (e < 0 || e >= config.num_experts) {
      return "routing: token " + std::to_string(a / static_cast<std::size_t>(k)) + " choice " +
             std::to_string(a % static_cast<std::size_t>(k)) + " names expert " + std::to_string(e) +
             ", outside 0.." + std::to_string(config.num_experts - 1);
    }
  }
  if (config.check_finite) return first_non_finite("routing weights", routing.weights, k);
  return {};
}

}  // namespace

Dispatcher::Dispatcher(const MoeConfig& config, comm::Communicator& ep_comm, bool in_flight_work)
    : config_(config), comm_(ep_comm) {
  set_phase("construction");
  collectively(comm_, [&] { config_.validate(); });
  agree_on_config(comm_, config_);
  set_phase("node topology");
  const int ranks_per_node = static_cast<int>(config_.ranks_per_node);
  collectively(comm_, [&] {
    if (auto problem = comm::ranks_per_node_problem(ranks_per_node, ep_size()); !problem.empty()) throw Error(problem);
  });
  topology_ = comm::discover_node_topology(comm_, ranks_per_node);
  if (config_.exchange == ExchangeKind::hierarchical) {
    collectively(comm_, [&] {
      if (auto problem = comm::blocks_problem(topology_); !problem.empty()) throw Error(problem);
    });
    hierarchical_ = std::make_unique<comm::HierarchicalExchange>(comm_, topology_, config_.d_model);
  }

  chunks_ = config_.overlap_chunks > 0 ? static_cast<int>(config_.overlap_chunks) : 1;
  auto_pending_ = config_.overlap_chunks == 0;
  if (auto_pending_) {
    // The fixed cost of one exchange, which every extra chunk pays twice: the best of a few empty
    // exchanges, the slowest rank's.
    std::vector<std::size_t> none(static_cast<std::size_t>(ep_size()), 0);
    double best = 1e30;
    for (int i = 0; i < 5; ++i) {
      const auto start = Clock::now();
      comm_.alltoallv(nullptr, none, nullptr, none);
      best = std::min(best, std::chrono::duration<double>(Clock::now() - start).count());
    }
    comm_.allreduce(std::span<double>(&best, 1), comm::ReduceOp::max);
    empty_exchange_seconds_ = best;
  }
  // Work that needs no remote rows (the layer's shared expert) runs while the dispatch travels, so
  // the exchanges then run on the communication thread even with one chunk (not the hierarchical
  // exchange's: they run on this thread).
  if ((chunks_ > 1 || in_flight_work) && !hierarchical_) start_worker();
}

Dispatcher::~Dispatcher() = default;

std::span<const float> DispatchContext::expert_rows() const {
  return std::span<const float>(expert_input_).first(static_cast<std::size_t>(plan_.num_recv_rows() * width_));
}

void Dispatcher::set_phase(const char* phase) {
  comm_.set_context({config_.label.c_str(), calls_, phase});
}

void Dispatcher::agree(const char* phase, const std::string& problem) {
  set_phase(phase);
  agree_on_errors(comm_, problem);
}

// Collective (the split).
void Dispatcher::start_worker() {
  worker_comm_ = comm_.split(0, ep_rank());
  worker_comm_->set_wait_mode(comm::Communicator::WaitMode::sleep);
  worker_ = std::make_unique<ExchangeWorker>(*worker_comm_);
}

std::size_t Dispatcher::wire_row_bytes() const {
  return static_cast<std::size_t>(config_.d_model) * wire_value_bytes(config_.wire_format());
}

void Dispatcher::grow_receive_side(DispatchContext& ctx) {
  const DispatchPlan& plan = ctx.plan_;
  const std::int64_t d = config_.d_model;
  const auto row_bytes = static_cast<std::int64_t>(wire_row_bytes());
  grow(send_wire_, plan.num_send_rows() * row_bytes);
  grow(ctx.returned_, plan.num_send_rows() * row_bytes);
  grow(recv_wire_, plan.num_recv_rows() * row_bytes);
  grow(ctx.expert_input_, plan.num_recv_rows() * d);
  grow(expert_rows_, plan.num_recv_rows() * d);
  if (hierarchical_) grow(row_values_, plan.num_send_rows());
}

void Dispatcher::plan(DispatchContext& ctx, const Routing& routing, const std::string& local_error,
                      FunctionRef<void()> reserve) {
  ++calls_;
  ctx.width_ = config_.d_model;
  std::string error_here = local_error.empty() ? routing_problem(config_, routing) : local_error;
  // Anything that fails here (an allocation, say) travels with the counts like a bad shape.
  if (error_here.empty()) {
    error_here = failure_of([&] { ctx.weight_.assign(routing.weights.begin(), routing.weights.end()); });
  }
  std::string late_error = agreement_.agree(comm_, config_, chunks_, routing, std::move(error_here), ctx.plan_,
                                            ctx.stats_.count_exchange_seconds,
                                            [&](const char* phase) { set_phase(phase); });
  // The receive side's sizes are known only now: a rank that cannot grow its buffers says so
  // before anyone enters the payload exchange.
  if (late_error.empty()) {
    late_error = failure_of([&] {
      const DispatchPlan& plan = ctx.plan_;
      const std::int64_t local = plan.local_experts;
      ctx.offsets_.assign(static_cast<std::size_t>(local + 1), 0);
      // Every layout is chunk-major, but a chunk holds whole experts or a part of one, in expert
      // order: each expert's rows are contiguous over the whole batch.
      for (std::int64_t e = 0; e < local; ++e) {
        std::int64_t rows = 0;
        for (int s = 0; s < plan.ep_size; ++s) rows += plan.recv_counts[static_cast<std::size_t>(s * local + e)];
        ctx.offsets_[static_cast<std::size_t>(e + 1)] = ctx.offsets_[static_cast<std::size_t>(e)] + rows;
      }
      grow_receive_side(ctx);
      if (reserve) reserve();
    });
  }
  agree("agree on receive buffers", late_error);
}

}  // namespace moe
