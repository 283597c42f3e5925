// The Dispatcher's construction and its plan: capacity and drops, and the agreement on what moves
// (the count exchange, the padded slot count or the global capacity decision), which is also where
// a local error is raised by every rank.
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
  check_consistency();
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

void Dispatcher::check_consistency() {
  // One hash per field; ranks whose hash differs from rank 0's say their value, and the agreed
  // error groups equal values with the ranks that hold them.
  const auto fields = config_.fields();
  std::vector<std::uint64_t> mine(fields.size()), all(fields.size() * static_cast<std::size_t>(ep_size()));
  for (std::size_t i = 0; i < fields.size(); ++i) {
    std::uint64_t h = 1469598103934665603ull;
    for (unsigned char c : fields[i].second) h = (h ^ c) * 1099511628211ull;
    mine[i] = h;
  }
  comm_.allgather(reinterpret_cast<const std::byte*>(mine.data()),
                  reinterpret_cast<std::byte*>(all.data()), mine.size() * sizeof(std::uint64_t));
  std::string differing;
  for (std::size_t i = 0; i < fields.size(); ++i) {
    bool same = true;
    for (int r = 1; r < ep_size(); ++r) same = same && all[static_cast<std::size_t>(r) * fields.size() + i] == all[i];
    if (same) continue;
    if (!differing.empty()) differing += ", ";
    differing += fields[i].first + "=" + fields[i].second;
  }
  if (differing.empty()) return;
  try {
    raise_agreed_error(comm_, differing);
  } catch (const Error& e) {
    throw Error(std::string("the ranks of layer '") + config_.label +
                "' were given different configurations: " + e.what());
  }
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
  std::string late_error = plan_exchange(ctx, routing, local_error);
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

// Ranks, capacity and drops, and the exchange of counts (or of the padded slot count). A local
// error travels with the counts, so every rank raises it together. Returns a failure met after
// that exchange ("" for none), for the next agreement to report.
std::string Dispatcher::plan_exchange(DispatchContext& ctx, const Routing& given, std::string local_error) {
  const int p_size = ep_size();
  const std::int64_t local = local_experts();
  DispatchPlan& plan = ctx.plan_;
  ctx.stats_.count_exchange_seconds = 0;
  if (local_error.empty()) local_error = routing_problem(config_, given);
  const Routing none{0, {}, {}};
  // Anything that fails here (an allocation, say) travels with the counts like a bad shape.
  if (local_error.empty()) {
    local_error = failure_of([&] {
      rank_assignments(config_, given.experts, given.weights, given.num_tokens, plan);
      ctx.weight_.assign(given.weights.begin(), given.weights.end());
    });
  }
  const Routing& routing = local_error.empty() ? given : none;
  if (!local_error.empty()) rank_assignments(config_, routing.experts, routing.weights, 0, plan);
  const std::int64_t num_tokens = routing.num_tokens;

  // Capacity over the whole group: decided before anything moves (runtime/global_capacity.hpp);
  // every rank's error is raised there.
  std::span<const std::int64_t> caps;
  const bool global = config_.capacity_scope == CapacityScope::global && !config_.dropless();
  if (global) {
    set_phase("global capacity");
    const auto start = Clock::now();
    global_capacity_.decide(comm_, config_, routing, plan, local_error);
    ctx.stats_.count_exchange_seconds = std::chrono::duration<double>(Clock::now() - start).count();
    caps = global_capacity_.caps();
  }

  if (config_.exchange == ExchangeKind::padded) {
    // No count exchange: every list is padded to the largest capacity of the group: that of the
    // largest batch, learned (with any rank's error) from one two-integer all-reduce, or the
    // group's own with global capacity.
    std::int64_t slots = 0;
    if (global) {
      slots = global_capacity_.capacity();
    } else {
      std::int64_t agreed[2] = {local_error.empty() ? 0 : 1, num_tokens};
      set_phase("padded slot count");
      const auto start = Clock::now();
      comm_.allreduce(std::span<std::int64_t>(agreed), comm::ReduceOp::max);
      ctx.stats_.count_exchange_seconds += std::chrono::duration<double>(Clock::now() - start).count();
      if (agreed[0] != 0) raise_agreed_error(comm_, local_error);
      slots = expert_capacity(config_, agreed[1]);
    }
    // A failure here comes after the agreement: it is returned, and the receive-side agreement
    // that follows reports it.
    return failure_of([&] {
      build_plan(config_, p_size, ep_rank(), routing.experts, num_tokens, chunks_, slots, caps, plan);
      recv_counts_.assign(static_cast<std::size_t>(p_size * local), slots);
      set_receive_counts(plan, recv_counts_);
    });
  }

  if (local_error.empty()) {
    local_error = failure_of([&] {
      build_plan(config_, p_size, ep_rank(), routing.experts, num_tokens, chunks_, -1, caps, plan);
    });
  }
  if (!local_error.empty()) {
    rank_assignments(config_, none.experts, none.weights, 0, plan);
    build_plan(config_, p_size, ep_rank(), none.experts, 0, chunks_, -1, {}, plan);
  }
  // Each rank tells each destination how many rows it sends to every one of its local experts,
  // plus a status word: a rank with a local error sends 1 there, so every rank learns of it from
  // this exchange and all raise the same error instead of some entering the payload exchange.
  // Blocks have room for the most experts any rank owns (ranks may own different counts).
  const std::int64_t block = (config_.num_experts + p_size - 1) / p_size + 1;
  count_send_.assign(static_cast<std::size_t>(p_size * block), 0);
  count_recv_.resize(count_send_.size());
  for (int p = 0; p < p_size; ++p) {
    count_send_[p * block] = local_error.empty() ? 0 : 1;
    std::copy_n(plan.kept.begin() + first_expert_of(p, config_.num_experts, p_size),
                num_experts_of(p, config_.num_experts, p_size), count_send_.begin() + p * block + 1);
  }
  set_phase("count exchange");
  const auto count_start = Clock::now();
  comm_.alltoall(reinterpret_cast<const std::byte*>(count_send_.data()),
                 reinterpret_cast<std::byte*>(count_recv_.data()),
                 static_cast<std::size_t>(block) * sizeof(std::int64_t));
  ctx.stats_.count_exchange_seconds += std::chrono::duration<double>(Clock::now() - count_start).count();
  bool any_error = false;
  recv_counts_.resize(static_cast<std::size_t>(p_size * local));
  for (int s = 0; s < p_size; ++s) {
    any_error = any_error || count_recv_[s * block] != 0;
    std::copy_n(count_recv_.begin() + s * block + 1, local, recv_counts_.begin() + s * local);
  }
  if (any_error) raise_agreed_error(comm_, local_error);
  return failure_of([&] { set_receive_counts(plan, recv_counts_); });
}

}  // namespace moe
