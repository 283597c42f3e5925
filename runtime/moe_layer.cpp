#include "runtime/moe_layer.hpp"

#include <algorithm>
#include <chrono>
#include <string>

#include "runtime/error.hpp"
#include "runtime/permute.hpp"

namespace moe {
namespace {

template <class T>
void grow(std::vector<T>& v, std::int64_t n) {
  if (static_cast<std::int64_t>(v.size()) < n) v.resize(static_cast<std::size_t>(n));
}

// Zeroes `seconds`, then adds the wall time up to each lap() to that lap's phase.
class PhaseClock {
 public:
  explicit PhaseClock(std::array<double, kNumPhases>& seconds) : seconds_(seconds), last_(Clock::now()) {
    seconds_ = {};
  }
  void lap(Phase phase) {
    const auto now = Clock::now();
    seconds_[static_cast<std::size_t>(phase)] += std::chrono::duration<double>(now - last_).count();
    last_ = now;
  }

 private:
  using Clock = std::chrono::steady_clock;
  std::array<double, kNumPhases>& seconds_;
  Clock::time_point last_;
};

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

}  // namespace

MoeLayer::MoeLayer(const MoeConfig& config, comm::Communicator& ep_comm)
    : config_(config), comm_(ep_comm) {
  collectively(comm_, [&] { config_.validate(comm_.size()); });
  gate_weight_.assign(static_cast<std::size_t>(config_.num_experts * config_.d_model), 0.0f);
  experts_ = experts::ExpertShard(
      experts_per_rank(), {config_.d_model, config_.d_hidden, config_.activation});
  gate_weight_grad_.assign(gate_weight_.size(), 0.0f);
  expert_grads_ = experts::ExpertShard(experts_.num_experts(), experts_.shape());
}

void MoeLayer::zero_grad() {
  std::fill(gate_weight_grad_.begin(), gate_weight_grad_.end(), 0.0f);
  expert_grads_.set_zero();
}

const ForwardResult& MoeLayer::forward(std::span<const float> x, std::span<float> y,
                                       ForwardContext& ctx) {
  const std::int64_t d = config_.d_model;
  PhaseClock clock(ctx.result_.stats.phase_seconds);

  // A local problem is not thrown yet: it travels with the counts, so no peer is left waiting.
  const std::string local_error = check_shapes(x, y, d);
  const std::int64_t num_tokens = local_error.empty() ? static_cast<std::int64_t>(x.size()) / d : 0;
  route(config_, gate_weight_, x, num_tokens, ctx.router_);
  build_plan(config_, ep_size(), ctx.router_.expert, ctx.router_.weight, num_tokens, ctx.plan_);
  clock.lap(Phase::route);

  exchange_counts(ctx, local_error);
  const DispatchPlan& plan = ctx.plan_;
  grow(send_rows_, plan.num_send_rows() * d);
  gather_rows(plan, x, d, send_rows_);
  clock.lap(Phase::permute);

  grow(recv_rows_, plan.num_recv_rows() * d);
  exchange_rows(plan, send_rows_, recv_rows_, true);
  clock.lap(Phase::exchange);

  grow(ctx.expert_input_, plan.num_recv_rows() * d);
  grow(expert_output_, plan.num_recv_rows() * d);
  regroup_rows(plan, recv_rows_, d, ctx.expert_input_, true);
  const std::span<const float> expert_input(ctx.expert_input_.data(),
                                            static_cast<std::size_t>(plan.num_recv_rows() * d));
  const std::span<float> expert_output(expert_output_.data(), expert_input.size());
  experts::ffn_forward(experts_, expert_input, plan.expert_offsets, expert_output, ctx.ffn_);
  regroup_rows(plan, expert_output, d, recv_rows_, false);
  clock.lap(Phase::experts);

  grow(ctx.returned_, plan.num_send_rows() * d);
  exchange_rows(plan, recv_rows_, ctx.returned_, false);
  clock.lap(Phase::exchange_back);

  combine_rows(plan, ctx.router_.weight, ctx.returned_, d, y);
  clock.lap(Phase::combine);

  reduce_statistics(ctx);
  return ctx.result_;
}

void MoeLayer::backward(std::span<const float> x, std::span<const float> dy, std::span<float> dx,
                        ForwardContext& ctx, double grad_aux, double grad_z) {
  const std::int64_t d = config_.d_model;
  const DispatchPlan& plan = ctx.plan_;
  const std::size_t expected = static_cast<std::size_t>(plan.num_tokens * d);
  std::string local_error;
  if (x.size() != expected || dy.size() != expected || dx.size() != expected) {
    local_error = "backward: x, dy and dx must each have " + std::to_string(expected) +
                  " elements (the forward's " + std::to_string(plan.num_tokens) +
                  " tokens), got " + std::to_string(x.size()) + ", " + std::to_string(dy.size()) +
                  " and " + std::to_string(dx.size());
  }
  agree_on_errors(comm_, local_error);

  PhaseClock clock(ctx.backward_seconds_);
  const std::int64_t k = config_.top_k;
  grow(grad_expert_, plan.num_send_rows() * d);
  grow(d_weight_, plan.num_tokens * k);
  combine_rows_backward(plan, ctx.router_.weight, ctx.returned_, dy, d, grad_expert_, d_weight_);
  clock.lap(Phase::combine);

  // The gradient of each expert output travels the dispatch route, its input gradient comes back.
  exchange_rows(plan, grad_expert_, recv_rows_, true);
  clock.lap(Phase::exchange_back);

  const std::size_t rows = static_cast<std::size_t>(plan.num_recv_rows() * d);
  grow(expert_output_, static_cast<std::int64_t>(rows));
  std::vector<float>& grad_rows = send_rows_;  // the forward's workspace, free during backward
  grow(grad_rows, static_cast<std::int64_t>(rows));
  regroup_rows(plan, recv_rows_, d, expert_output_, true);
  experts::ffn_backward(experts_, std::span<const float>(ctx.expert_input_).first(rows),
                        plan.expert_offsets, ctx.ffn_,
                        std::span<const float>(expert_output_).first(rows),
                        std::span<float>(grad_rows).first(rows), expert_grads_);
  regroup_rows(plan, std::span<const float>(grad_rows).first(rows), d, recv_rows_, false);
  clock.lap(Phase::experts);

  exchange_rows(plan, recv_rows_, grad_expert_, false);
  clock.lap(Phase::exchange);

  gather_rows_backward(plan, grad_expert_, d, dx);
  clock.lap(Phase::permute);

  grow(d_logits_, plan.num_tokens * config_.num_experts);
  const RouterLossGrad losses{ctx.result_.stats.expert_counts, ctx.result_.stats.total_tokens,
                              grad_aux, grad_z};
  route_backward(config_, gate_weight_, x, ctx.router_, d_weight_, losses, d_logits_, dx,
                 gate_weight_grad_);
  clock.lap(Phase::route);
}

// Each rank tells each destination how many rows it will send to every one of its local experts,
// plus a status word: a rank with a local error sends 1 there, so every rank learns of it from this
// exchange and all raise the same error together instead of some entering the payload exchange.
void MoeLayer::exchange_counts(ForwardContext& ctx, const std::string& local_error) {
  const int p_size = ep_size();
  const std::int64_t local = experts_per_rank();
  const std::int64_t block = local + 1;
  count_send_.resize(static_cast<std::size_t>(p_size * block));
  count_recv_.resize(count_send_.size());
  for (int p = 0; p < p_size; ++p) {
    count_send_[p * block] = local_error.empty() ? 0 : 1;
    std::copy_n(ctx.plan_.kept.begin() + p * local, local, count_send_.begin() + p * block + 1);
  }
  comm_.alltoall(reinterpret_cast<const std::byte*>(count_send_.data()),
                 reinterpret_cast<std::byte*>(count_recv_.data()),
                 static_cast<std::size_t>(block) * sizeof(std::int64_t));
  bool any_error = false;
  recv_counts_.resize(static_cast<std::size_t>(p_size * local));
  for (int s = 0; s < p_size; ++s) {
    any_error = any_error || count_recv_[s * block] != 0;
    std::copy_n(count_recv_.begin() + s * block + 1, local, recv_counts_.begin() + s * local);
  }
  if (any_error) raise_agreed_error(comm_, local_error);
  set_receive_counts(ctx.plan_, recv_counts_);
}

// Dispatch (forward_direction) sends the plan's send rows and receives rows for local experts;
// the way back swaps the two.
void MoeLayer::exchange_rows(const DispatchPlan& plan, std::span<const float> send,
                             std::span<float> recv, bool forward_direction) {
  const int p_size = ep_size();
  const std::size_t row_bytes = static_cast<std::size_t>(config_.d_model) * sizeof(float);
  send_bytes_.resize(static_cast<std::size_t>(p_size));
  recv_bytes_.resize(static_cast<std::size_t>(p_size));
  for (int p = 0; p < p_size; ++p) {
    const std::int64_t out_rows = forward_direction ? plan.send_rows_to(p) : plan.recv_rows_from(p);
    const std::int64_t in_rows = forward_direction ? plan.recv_rows_from(p) : plan.send_rows_to(p);
    send_bytes_[p] = static_cast<std::size_t>(out_rows) * row_bytes;
    recv_bytes_[p] = static_cast<std::size_t>(in_rows) * row_bytes;
  }
  comm_.alltoallv(reinterpret_cast<const std::byte*>(send.data()), send_bytes_,
                  reinterpret_cast<std::byte*>(recv.data()), recv_bytes_);
}

// One allgather of every rank's partial sums; each rank then adds them in rank order, so the losses
// and counts are bitwise identical on every rank and on every run.
void MoeLayer::reduce_statistics(ForwardContext& ctx) {
  const RouterOutput& router = ctx.router_;
  const DispatchPlan& plan = ctx.plan_;
  const std::int64_t num_experts = config_.num_experts;
  const int p_size = ep_size();
  const std::int64_t row_bytes = config_.d_model * static_cast<std::int64_t>(sizeof(float));
  // Layout per rank: counts[E], kept[E], prob_sum[E], then the scalars below.
  enum Scalar { lse_sq, tokens, dropped_assignments, dropped_tokens, bytes_sent, bytes_received,
                num_scalars };
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
  comm_.allgather(reinterpret_cast<const std::byte*>(stat_local_.data()),
                  reinterpret_cast<std::byte*>(stat_all_.data()),
                  static_cast<std::size_t>(width) * sizeof(double));

  ForwardStats& stats = ctx.result_.stats;
  stats.expert_counts.assign(static_cast<std::size_t>(num_experts), 0);
  stats.expert_kept.assign(static_cast<std::size_t>(num_experts), 0);
  stats.rows_to_peer.resize(static_cast<std::size_t>(p_size));
  stats.rows_from_peer.resize(static_cast<std::size_t>(p_size));
  for (int p = 0; p < p_size; ++p) {
    stats.rows_to_peer[p] = plan.send_rows_to(p);
    stats.rows_from_peer[p] = plan.recv_rows_from(p);
  }
  stats.bytes_sent.resize(static_cast<std::size_t>(p_size));
  stats.bytes_received.resize(static_cast<std::size_t>(p_size));
  stats.total_tokens = stats.dropped_assignments = stats.dropped_tokens = 0;
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
}

}  // namespace moe
