#include "runtime/moe_layer.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <string>

#include "runtime/error.hpp"

namespace moe {
namespace {

template <class T>
void grow(std::vector<T>& v, std::int64_t n) {
  if (static_cast<std::int64_t>(v.size()) < n) v.resize(static_cast<std::size_t>(n));
}

template <class T>
std::span<T> rows(std::vector<T>& v, std::int64_t first, std::int64_t count, std::int64_t width) {
  return std::span<T>(v).subspan(static_cast<std::size_t>(first * width),
                                 static_cast<std::size_t>(count * width));
}

using Clock = std::chrono::steady_clock;

std::string check_shapes(std::span<const float> x, std::span<const float> y, std::int64_t d) {
  if (x.size() % static_cast<std::size_t>(d) != 0) {
    return "input has " + std::to_string(x.size()) + " elements, not a multiple of d_model=" +
           std::to_string(d);
  }
  if (y.size() != x.size()) {
    return "output has " + std::to_string(y.size()) + " elements but the input has " +
           std::to_string(x.size());
  }
  return {};
}

// The first non-finite value of a [rows, width] tensor, as an error message, or "".
std::string first_non_finite(const char* name, std::span<const float> values, std::int64_t width) {
  for (std::size_t i = 0; i < values.size(); ++i) {
    if (!std::isfinite(values[i])) {
      return std::string(name) + " row " + std::to_string(static_cast<std::int64_t>(i) / width) +
             " column " + std::to_string(static_cast<std::int64_t>(i) % width) + " is " +
             (std::isnan(values[i]) ? "NaN" : "infinite") + " (check_finite is on)";
    }
  }
  return {};
}

// Runs `body`; returns what it threw, as text ("" when it succeeded).
template <class Body>
std::string failure_of(Body&& body) {
  try {
    body();
    return {};
  } catch (const std::bad_alloc&) {
    return "out of memory growing the layer's buffers";
  } catch (const std::exception& e) {
    return e.what();
  }
}

}  // namespace

MoeLayer::MoeLayer(const MoeConfig& config, comm::Communicator& ep_comm)
    : config_(config), comm_(ep_comm) {
  set_phase("construction");
  collectively(comm_, [&] { config_.validate(); });
  check_consistency();
  set_phase("node topology");
  collectively(comm_, [&] {
    topology_ = comm::discover_node_topology(comm_, static_cast<int>(config_.ranks_per_node));
  });
  if (config_.exchange == ExchangeKind::hierarchical) {
    hierarchical_ = std::make_unique<comm::HierarchicalExchange>(comm_, topology_, config_.d_model);
  }
  gate_weight_.assign(static_cast<std::size_t>(config_.num_experts * config_.d_model), 0.0f);
  selection_bias_.assign(static_cast<std::size_t>(config_.num_experts), 0.0f);
  experts_ = experts::ExpertShard(
      local_experts(), {config_.d_model, config_.d_hidden, config_.activation});
  shared_expert_ = experts::ExpertShard(
      config_.has_shared_expert() ? 1 : 0, {config_.d_model, config_.d_shared_hidden, config_.activation});
  gate_weight_grad_.assign(gate_weight_.size(), 0.0f);
  expert_grads_ = experts::ExpertShard(experts_.num_experts(), experts_.shape());
  shared_expert_grads_ = experts::ExpertShard(shared_expert_.num_experts(), shared_expert_.shape());

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
  // The shared expert needs no remote rows: it is computed while the dispatch travels, so the
  // exchanges then run on the communication thread even with one chunk (not the hierarchical
  // exchange's: they run on this thread).
  if ((chunks_ > 1 || config_.has_shared_expert()) && !hierarchical_) start_worker();
}

MoeLayer::~MoeLayer() = default;

void MoeLayer::update_selection_bias(const ForwardResult& result) {
  moe::update_selection_bias(selection_bias_, result.stats.expert_counts, config_.bias_update_rate);
}

void MoeLayer::check_consistency() {
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

void MoeLayer::set_phase(const char* phase) {
  comm_.set_context({config_.label.c_str(), calls_, phase});
}

void MoeLayer::grow_receive_side(ForwardContext& ctx) {
  const DispatchPlan& plan = ctx.plan_;
  const std::int64_t d = config_.d_model;
  const auto row_bytes = static_cast<std::int64_t>(wire_row_bytes());
  grow(send_wire_, plan.num_send_rows() * row_bytes);
  grow(ctx.returned_, plan.num_send_rows() * row_bytes);
  grow(recv_wire_, plan.num_recv_rows() * row_bytes);
  grow(ctx.expert_input_, plan.num_recv_rows() * d);
  grow(expert_rows_, plan.num_recv_rows() * d);
  if (hierarchical_) grow(row_values_, plan.num_send_rows());
  if (static_cast<int>(ctx.ffn_.size()) < plan.num_chunks) ctx.ffn_.resize(static_cast<std::size_t>(plan.num_chunks));
  // The experts' saved activations too, so no chunk's computation allocates mid-pipeline.
  for (int c = 0; c < plan.num_chunks; ++c) {
    experts::reserve(ctx.ffn_[static_cast<std::size_t>(c)], plan.chunk_recv_rows(c), experts_.shape(),
                     config_.compute);
  }
  if (config_.has_shared_expert()) {
    experts::reserve(ctx.shared_ffn_, plan.num_tokens, shared_expert_.shape(), config_.compute);
    grow(shared_rows_, plan.num_tokens * d);
  }
}

// Collective (the split).
void MoeLayer::start_worker() {
  worker_comm_ = comm_.split(0, ep_rank());
  worker_comm_->set_wait_mode(comm::Communicator::WaitMode::sleep);
  worker_ = std::make_unique<ExchangeWorker>(*worker_comm_);
}

void MoeLayer::parameters_changed() {
  experts_.mark_changed();
  shared_expert_.mark_changed();
}

void MoeLayer::zero_grad() {
  std::fill(gate_weight_grad_.begin(), gate_weight_grad_.end(), 0.0f);
  expert_grads_.set_zero();
  shared_expert_grads_.set_zero();
}

std::size_t MoeLayer::wire_row_bytes() const {
  return static_cast<std::size_t>(config_.d_model) * wire_value_bytes(config_.wire_format());
}

const ForwardResult& MoeLayer::forward(std::span<const float> x, std::span<float> y,
                                       ForwardContext& ctx) {
  ++calls_;
  PhaseTimer clock(ctx.result_.stats.phase_seconds);
  const std::string late_error = plan_dispatch(x, y, ctx);
  clock.lap(Phase::route);

  // The receive side's sizes are known only now: a rank that cannot grow its buffers says so
  // before anyone enters the payload exchange.
  const DispatchPlan& plan = ctx.plan_;
  set_phase("agree on receive buffers");
  agree_on_errors(comm_, late_error.empty() ? failure_of([&] { grow_receive_side(ctx); }) : late_error);
  if (!hierarchical_) gather_rows(plan, x, wire(send_wire_.data()));
  clock.lap(Phase::permute);

  const std::int64_t d = config_.d_model;
  shared_offsets_ = {0, plan.num_tokens};
  ctx.result_.stats.shared_expert_seconds = 0;
  const auto shared_forward = [&] {
    if (!config_.has_shared_expert()) return;
    const auto start = Clock::now();
    experts::ffn_forward(shared_expert_, x, shared_offsets_, rows(shared_rows_, 0, plan.num_tokens, d),
                         ctx.shared_ffn_, config_.compute);
    ctx.result_.stats.shared_expert_seconds = std::chrono::duration<double>(Clock::now() - start).count();
    clock.lap(Phase::experts);
  };
  double exchange_seconds = 0;
  if (hierarchical_) {
    shared_forward();
    ctx.result_.stats.fill_seconds = 0;  // no pipeline
    exchange_seconds = run_hierarchical_forward(ctx, x, y, clock);
  } else {
    exchange_seconds = run_pipeline(ctx, send_wire_.data(), ctx.returned_.data(), &MoeLayer::forward_chunk,
                                    clock, "dispatch", "return", ctx.result_.stats.fill_seconds,
                                    shared_forward);
    combine_rows(plan, ctx.router_.weight, wire(ctx.returned_.data()), y);
  }
  if (config_.has_shared_expert()) {
    for (std::int64_t i = 0; i < plan.num_tokens * d; ++i) y[static_cast<std::size_t>(i)] += shared_rows_[static_cast<std::size_t>(i)];
  }
  clock.lap(Phase::combine);

  reduce_statistics(ctx, exchange_seconds);
  return ctx.result_;
}

void MoeLayer::backward(std::span<const float> x, std::span<const float> dy, std::span<float> dx,
                        ForwardContext& ctx, double grad_aux, double grad_z) {
  ++calls_;
  const std::int64_t d = config_.d_model;
  const DispatchPlan& plan = ctx.plan_;
  const std::size_t expected = static_cast<std::size_t>(plan.num_tokens * d);
  std::string local_error;
  if (x.size() != expected || dy.size() != expected || dx.size() != expected) {
    local_error = "backward: x, dy and dx must each have " + std::to_string(expected) +
                  " elements (the forward's " + std::to_string(plan.num_tokens) +
                  " tokens), got " + std::to_string(x.size()) + ", " + std::to_string(dy.size()) +
                  " and " + std::to_string(dx.size());
  } else if (config_.check_finite) {
    local_error = first_non_finite("grad_output", dy, d);
  }
  if (local_error.empty()) {
    local_error = failure_of([&] {
      grow(send_wire_, plan.num_send_rows() * static_cast<std::int64_t>(wire_row_bytes()));
      grow(recv_wire_, plan.num_recv_rows() * static_cast<std::int64_t>(wire_row_bytes()));
      grow(d_weight_, plan.num_tokens * config_.top_k);
      grow(expert_rows_, plan.num_recv_rows() * d);
      grow(expert_grad_rows_, plan.num_recv_rows() * d);
      grow(d_logits_, plan.num_tokens * config_.num_experts);
      if (config_.has_shared_expert()) grow(shared_rows_, plan.num_tokens * d);
      if (hierarchical_) grow(row_values_, plan.num_send_rows());
    });
  }
  set_phase("backward: agree on inputs");
  agree_on_errors(comm_, local_error);

  PhaseTimer clock(ctx.backward_seconds_);
  shared_offsets_ = {0, plan.num_tokens};
  const auto shared_backward = [&] {
    if (!config_.has_shared_expert()) return;
    experts::ffn_backward(shared_expert_, x, shared_offsets_, ctx.shared_ffn_, dy,
                          rows(shared_rows_, 0, plan.num_tokens, d), shared_expert_grads_);
    clock.lap(Phase::experts);
  };
  if (hierarchical_) {
    shared_backward();
    ctx.backward_fill_seconds_ = 0;  // no pipeline
    ctx.backward_exchange_seconds_ = run_hierarchical_backward(ctx, dy, dx, clock);
  } else {
    combine_rows_backward(plan, ctx.router_.weight, wire(ctx.returned_.data()), dy,
                          wire(send_wire_.data()), d_weight_);
    zero_padding_rows(plan, wire(send_wire_.data()));
    clock.lap(Phase::combine);
    // The gradient of each expert output travels the dispatch route and the input gradient comes
    // back into the same buffer: chunk c's return lands where chunk c's dispatch already left.
    ctx.backward_exchange_seconds_ =
        run_pipeline(ctx, send_wire_.data(), send_wire_.data(), &MoeLayer::backward_chunk, clock,
                     "backward: gradients to experts", "backward: gradients back",
                     ctx.backward_fill_seconds_, shared_backward);
    gather_rows_backward(plan, wire(send_wire_.data()), dx);
  }
  if (config_.has_shared_expert()) {
    for (std::int64_t i = 0; i < plan.num_tokens * d; ++i) dx[static_cast<std::size_t>(i)] += shared_rows_[static_cast<std::size_t>(i)];
  }
  clock.lap(Phase::permute);

  const RouterLossGrad losses{ctx.result_.stats.expert_counts, ctx.result_.stats.total_tokens,
                              grad_aux, grad_z};
  route_backward(config_, gate_weight_, x, ctx.router_, d_weight_, losses, d_logits_, dx,
                 gate_weight_grad_);
  clock.lap(Phase::route);
}

void MoeLayer::forward_chunk(MoeLayer& layer, ForwardContext& ctx, int c) {
  const DispatchPlan& plan = ctx.plan_;
  const std::int64_t d = layer.config_.d_model;
  const std::int64_t first = plan.chunk_recv_begin(c), count = plan.chunk_recv_rows(c);
  const WireRows received = layer.wire(layer.recv_wire_.data());
  to_expert_order(plan, c, received, ctx.expert_input_);
  experts::ffn_forward(layer.experts_, rows(ctx.expert_input_, first, count, d),
                       plan.chunk_expert_offsets(c), rows(layer.expert_rows_, first, count, d),
                       ctx.ffn_[static_cast<std::size_t>(c)], layer.config_.compute);
  from_expert_order(plan, c, layer.expert_rows_, received);
}

void MoeLayer::backward_chunk(MoeLayer& layer, ForwardContext& ctx, int c) {
  const DispatchPlan& plan = ctx.plan_;
  const std::int64_t d = layer.config_.d_model;
  const std::int64_t first = plan.chunk_recv_begin(c), count = plan.chunk_recv_rows(c);
  const WireRows received = layer.wire(layer.recv_wire_.data());
  to_expert_order(plan, c, received, layer.expert_grad_rows_);
  experts::ffn_backward(layer.experts_, rows(ctx.expert_input_, first, count, d),
                        plan.chunk_expert_offsets(c), ctx.ffn_[static_cast<std::size_t>(c)],
                        rows(layer.expert_grad_rows_, first, count, d),
                        rows(layer.expert_rows_, first, count, d), layer.expert_grads_);
  from_expert_order(plan, c, layer.expert_rows_, received);
}

template <class InFlight>
double MoeLayer::run_pipeline(ForwardContext& ctx, const std::byte* send, std::byte* returned,
                              ChunkWork work, PhaseTimer& timer, const char* out_phase,
                              const char* back_phase, double& fill_seconds, InFlight&& in_flight) {
  const DispatchPlan& plan = ctx.plan_;
  const int chunks = plan.num_chunks;
  const auto p_size = static_cast<std::size_t>(ep_size());
  const std::size_t row_bytes = wire_row_bytes();
  std::byte* recv = recv_wire_.data();
  const comm::OperationContext out_context{config_.label.c_str(), calls_, out_phase};
  const comm::OperationContext back_context{config_.label.c_str(), calls_, back_phase};

  // Per chunk: bytes to each destination, then bytes from each source; the way back swaps them.
  chunk_bytes_.resize(static_cast<std::size_t>(chunks) * 2 * p_size);
  const auto out_bytes = [&](int c) {
    return std::span<const std::size_t>(chunk_bytes_).subspan(static_cast<std::size_t>(c) * 2 * p_size, p_size);
  };
  const auto in_bytes = [&](int c) {
    return std::span<const std::size_t>(chunk_bytes_).subspan((static_cast<std::size_t>(c) * 2 + 1) * p_size, p_size);
  };
  for (int c = 0; c < chunks; ++c) {
    std::size_t* out = chunk_bytes_.data() + static_cast<std::size_t>(c) * 2 * p_size;
    for (int p = 0; p < ep_size(); ++p) {
      out[p] = static_cast<std::size_t>(plan.send_rows(c, p)) * row_bytes;
      out[p_size + static_cast<std::size_t>(p)] = static_cast<std::size_t>(plan.recv_rows(c, p)) * row_bytes;
    }
  }
  const auto send_at = [&](int c) { return static_cast<std::size_t>(plan.chunk_send_begin(c)) * row_bytes; };
  const auto recv_at = [&](int c) { return static_cast<std::size_t>(plan.chunk_recv_begin(c)) * row_bytes; };

  if (!worker_) {
    // One chunk: the exchanges run here, nothing to overlap.
    in_flight();
    const auto start = Clock::now();
    comm_.set_context(out_context);
    comm_.alltoallv(send, out_bytes(0), recv, in_bytes(0));
    const auto dispatched = Clock::now();
    fill_seconds = std::chrono::duration<double>(dispatched - start).count();
    timer.lap(Phase::exchange);
    work(*this, ctx, 0);
    timer.lap(Phase::experts);
    const auto back_start = Clock::now();
    comm_.set_context(back_context);
    comm_.alltoallv(recv, in_bytes(0), returned, out_bytes(0));
    timer.lap(Phase::exchange_back);
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
        worker_->post({send + send_at(c), out_bytes(c), recv + recv_at(c), in_bytes(c), out_context});
  }
  in_flight();
  for (int c = 0; c < chunks; ++c) {
    const auto waiting = Clock::now();
    worker_->wait(tickets_[static_cast<std::size_t>(c)]);
    if (c == 0) fill_seconds = std::chrono::duration<double>(Clock::now() - waiting).count();
    timer.lap(Phase::exchange);
    work(*this, ctx, c);
    timer.lap(Phase::experts);
    tickets_[static_cast<std::size_t>(chunks + c)] =
        worker_->post({recv + recv_at(c), in_bytes(c), returned + send_at(c), out_bytes(c), back_context});
  }
  for (int c = 0; c < chunks; ++c) worker_->wait(tickets_[static_cast<std::size_t>(chunks + c)]);
  timer.lap(Phase::exchange_back);
  return worker_->take_busy_seconds();
}

std::string MoeLayer::plan_dispatch(std::span<const float> x, std::span<const float> y,
                                    ForwardContext& ctx) {
  const std::int64_t d = config_.d_model;
  const int p_size = ep_size();
  const std::int64_t local = local_experts();
  RouterOutput& router = ctx.router_;
  DispatchPlan& plan = ctx.plan_;
  ctx.result_.stats.count_exchange_seconds = 0;
  std::string local_error = check_shapes(x, y, d);
  if (local_error.empty() && config_.check_finite) local_error = first_non_finite("input", x, d);
  std::int64_t num_tokens = local_error.empty() ? static_cast<std::int64_t>(x.size()) / d : 0;
  // Anything that fails here (an allocation, say) travels with the counts like a bad shape.
  if (local_error.empty()) {
    local_error = failure_of([&] {
      route(config_, gate_weight_, selection_bias_, x, num_tokens, router);
      rank_assignments(config_, router.expert, router.weight, num_tokens, plan);
    });
  }
  if (!local_error.empty()) {
    num_tokens = 0;
    route(config_, gate_weight_, selection_bias_, {}, 0, router);
    rank_assignments(config_, router.expert, router.weight, 0, plan);
  }

  // Capacity over the whole group: decided before anything moves (runtime/global_capacity.hpp);
  // every rank's error is raised there.
  std::span<const std::int64_t> caps;
  const bool global = config_.capacity_scope == CapacityScope::global && !config_.dropless();
  if (global) {
    set_phase("global capacity");
    const auto start = Clock::now();
    global_capacity_.decide(comm_, config_, router, plan, local_error);
    ctx.result_.stats.count_exchange_seconds = std::chrono::duration<double>(Clock::now() - start).count();
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
      ctx.result_.stats.count_exchange_seconds += std::chrono::duration<double>(Clock::now() - start).count();
      if (agreed[0] != 0) raise_agreed_error(comm_, local_error);
      slots = expert_capacity(config_, agreed[1]);
    }
    // A failure here comes after the agreement: it is returned, and the receive-side agreement
    // that follows reports it.
    return failure_of([&] {
      build_plan(config_, p_size, ep_rank(), router.expert, num_tokens, chunks_, slots, caps, plan);
      recv_counts_.assign(static_cast<std::size_t>(p_size * local), slots);
      set_receive_counts(plan, recv_counts_);
    });
  }

  if (local_error.empty()) {
    local_error = failure_of([&] {
      build_plan(config_, p_size, ep_rank(), router.expert, num_tokens, chunks_, -1, caps, plan);
    });
  }
  if (!local_error.empty()) {
    rank_assignments(config_, router.expert, router.weight, 0, plan);
    build_plan(config_, p_size, ep_rank(), router.expert, 0, chunks_, -1, {}, plan);
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
  ctx.result_.stats.count_exchange_seconds +=
      std::chrono::duration<double>(Clock::now() - count_start).count();
  bool any_error = false;
  recv_counts_.resize(static_cast<std::size_t>(p_size * local));
  for (int s = 0; s < p_size; ++s) {
    any_error = any_error || count_recv_[s * block] != 0;
    std::copy_n(count_recv_.begin() + s * block + 1, local, recv_counts_.begin() + s * local);
  }
  if (any_error) raise_agreed_error(comm_, local_error);
  return failure_of([&] { set_receive_counts(plan, recv_counts_); });
}

// Each rank adds the gathered partial sums in rank order, so the losses
// and counts are bitwise identical on every rank and on every run.
void MoeLayer::reduce_statistics(ForwardContext& ctx, double exchange_seconds) {
  const RouterOutput& router = ctx.router_;
  const DispatchPlan& plan = ctx.plan_;
  const std::int64_t num_experts = config_.num_experts;
  const int p_size = ep_size();
  // What really crosses the network: rows in the wire format.
  const auto row_bytes = static_cast<std::int64_t>(wire_row_bytes());
  // Layout per rank: counts[E], kept[E], prob_sum[E], then the scalars below.
  enum Scalar { lse_sq, tokens, dropped_assignments, dropped_tokens, bytes_sent, bytes_received,
                internode_bytes, internode_messages, exchange_s, experts_s, num_scalars };
  const std::int64_t width = 3 * num_experts + num_scalars;
  stat_local_.resize(static_cast<std::size_t>(width));
  stat_all_.resize(static_cast<std::size_t>(width * p_size));
  for (std::int64_t e = 0; e < num_experts; ++e) {
    stat_local_[e] = static_cast<double>(router.counts[e]);
    stat_local_[num_experts + e] = static_cast<double>(plan.kept[e]);
    stat_local_[2 * num_experts + e] = router.prob_sum[e];
  }
  double* scalars = stat_local_.data() + 3 * num_experts;
  scalars[lse_sq] = router.logsumexp_sq_sum;
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
  scalars[experts_s] = ctx.result_.stats.seconds(Phase::experts);
  set_phase("statistics");
  comm_.allgather(reinterpret_cast<const std::byte*>(stat_local_.data()),
                  reinterpret_cast<std::byte*>(stat_all_.data()),
                  static_cast<std::size_t>(width) * sizeof(double));

  ForwardStats& stats = ctx.result_.stats;
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
  double lse_sq_total = 0;
  std::vector<double>& prob_sum = prob_sum_;
  prob_sum.assign(static_cast<std::size_t>(num_experts), 0.0);
  for (int r = 0; r < p_size; ++r) {
    const double* row = stat_all_.data() + r * width;
    for (std::int64_t e = 0; e < num_experts; ++e) {
      stats.expert_counts[e] += static_cast<std::int64_t>(row[e]);
      stats.expert_kept[e] += static_cast<std::int64_t>(row[num_experts + e]);
      prob_sum[e] += row[2 * num_experts + e];
    }
    const double* s = row + 3 * num_experts;
    lse_sq_total += s[lse_sq];
    stats.total_tokens += static_cast<std::int64_t>(s[tokens]);
    stats.dropped_assignments += static_cast<std::int64_t>(s[dropped_assignments]);
    stats.dropped_tokens += static_cast<std::int64_t>(s[dropped_tokens]);
    stats.bytes_sent[r] = static_cast<std::int64_t>(s[bytes_sent]);
    stats.bytes_received[r] = static_cast<std::int64_t>(s[bytes_received]);
    stats.internode_bytes += static_cast<std::int64_t>(s[internode_bytes]);
    stats.internode_messages += static_cast<std::int64_t>(s[internode_messages]);
  }

  // SPEC.md section 7; both losses are 0 for an empty group.
  ForwardResult& result = ctx.result_;
  result.aux_loss = result.z_loss = 0;
  const double total = static_cast<double>(stats.total_tokens);
  if (stats.total_tokens > 0) {
    double balance = 0;
    for (std::int64_t e = 0; e < num_experts; ++e) {
      const double f = static_cast<double>(stats.expert_counts[e]) /
                       (total * static_cast<double>(config_.top_k));
      balance += f * (prob_sum[e] / total);
    }
    result.aux_loss = config_.aux_loss_coef * static_cast<double>(num_experts) * balance;
    result.z_loss = config_.z_loss_coef * lse_sq_total / total;
  }
  stats.exchange_seconds = exchange_seconds;
  stats.set_load_spread();

  if (auto_pending_) {
    // Every rank decides from the same gathered numbers, so all choose the same chunk count.
    double exchange = 1e30, compute = 0;
    for (int r = 0; r < p_size; ++r) {
      const double* s = stat_all_.data() + r * width + 3 * num_experts;
      exchange = std::min(exchange, s[exchange_s]);  // the rank that waited least: pure transfer
      compute = std::max(compute, s[experts_s]);
    }
    choose_auto_chunks(exchange, compute, stats);
  }
}

// Pipelining C chunks costs about max(X, K) + min(X, K)/C + 2·C·λ for exchange time X, compute
// time K and fixed cost λ of one exchange; the best C is near sqrt(min(X, K) / (2λ)). Chunks are
// kept at 256 rows per expert GEMM or more, where the GEMMs still run near their peak. Chosen
// once, from the first call; a later run may choose differently when its timings differ, so a run
// that must be bitwise reproducible across runs sets a number.
void MoeLayer::choose_auto_chunks(double exchange, double compute, const ForwardStats& stats) {
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
