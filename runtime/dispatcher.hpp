// The Dispatcher: the exchange level of the layer, usable on its own (ARCHITECTURE.md, "Two levels,
// both public"). The caller hands in each token's experts and weights; the Dispatcher decides
// capacity and drops (SPEC.md section 4, rank or global scope), agrees with every rank on the row
// counts (both through runtime/plan_agreement.hpp, the plan logic it shares with the device
// layer), moves the kept rows to the ranks owning their experts, grouped by local expert, and
// brings the experts' outputs back, weighted and summed per token (section 6). Backward walks the
// same plan in reverse (section 8, minus the router and the experts, which are the caller's).
//
// One micro-batch:
//   plan(ctx, routing)                     collective; afterwards ctx knows every size
//   then either, pipelined (chunks overlap the exchanges with the caller's expert function):
//     forward(ctx, x, y, experts, timer)   experts(batch) per chunk as its rows arrive
//     prepare_backward(ctx, dy); backward(ctx, dy, dx, d_weight, experts_backward, timer)
//   or, split (one exchange at a time; the caller computes in between):
//     dispatch(ctx, x) -> rows grouped by local expert   ...   combine(ctx, outputs, y)
//     dispatch_backward(ctx, dy) -> gradient rows        ...   combine_backward(ctx, grads, dx, d_weight)
// Every call is collective over the expert-parallel communicator. Errors are too: a bad input on
// one rank becomes the same moe::Error on every rank. After warm-up nothing allocates.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "comm/communicator.hpp"
#include "comm/hierarchical_exchange.hpp"
#include "comm/node_topology.hpp"
#include "runtime/config.hpp"
#include "runtime/dispatch_io.hpp"
#include "runtime/dispatch_plan.hpp"
#include "runtime/exchange_worker.hpp"
#include "runtime/permute.hpp"
#include "runtime/plan_agreement.hpp"
#include "runtime/plan_statistics.hpp"
#include "runtime/stats.hpp"

namespace moe {

// One micro-batch's plan and the rows it keeps for its backward. Keep one per micro-batch in
// flight; reusing one for batches of the same shape allocates nothing.
class DispatchContext {
 public:
  const DispatchPlan& plan() const { return plan_; }
  std::int64_t num_tokens() const { return plan_.num_tokens; }
  // Whether capacity kept choice j of token t.
  bool kept(std::int64_t t, std::int64_t j) const { return plan_.send_row[static_cast<std::size_t>(t * plan_.top_k + j)] >= 0; }
  // The combine weights the plan was made with (a copy: the caller's may go).
  std::span<const float> weights() const {
    return std::span<const float>(weight_).first(static_cast<std::size_t>(plan_.num_tokens * plan_.top_k));
  }
  // Known after plan(): rows this rank's experts receive, all of local expert e's at
  // [expert_offsets()[e], expert_offsets()[e+1]) (L+1 entries).
  std::int64_t num_expert_rows() const { return plan_.num_recv_rows(); }
  std::span<const std::int64_t> expert_offsets() const { return offsets_; }
  // Filled by dispatch() or forward(): the rows themselves, [num_expert_rows(), d], kept for backward.
  std::span<const float> expert_rows() const;

  // Statistics of the last forward (SPEC.md section 10); the phases the caller timed included.
  ForwardStats& stats() { return stats_; }
  const ForwardStats& stats() const { return stats_; }
  // Of the last backward: wall time per phase, time in exchanges, and the wait for its first chunk.
  std::array<double, kNumPhases>& backward_phase_seconds() { return backward_seconds_; }
  const std::array<double, kNumPhases>& backward_phase_seconds() const { return backward_seconds_; }
  double backward_exchange_seconds() const { return backward_exchange_seconds_; }
  double backward_fill_seconds() const { return backward_fill_seconds_; }

 private:
  friend class Dispatcher;
  DispatchPlan plan_;
  std::int64_t width_ = 0;                     // d
  std::vector<float> weight_;                  // [T*k]
  std::vector<std::int64_t> offsets_;          // [L+1]
  std::vector<float> expert_input_;            // received rows in expert order, every chunk
  std::vector<std::byte> returned_;            // expert outputs back home, send order, wire format
  comm::HierarchicalRoute route_;              // exchange = hierarchical: what its backward needs
  ForwardStats stats_;
  // The split passes: time in exchanges so far, and when the rows reached the experts.
  double split_exchange_seconds_ = 0;
  std::chrono::steady_clock::time_point dispatched_at_{};
  std::array<double, kNumPhases> backward_seconds_{};
  double backward_exchange_seconds_ = 0;
  double backward_fill_seconds_ = 0;
};

class Dispatcher {
 public:
  // Collective over `ep_comm` (which must outlive it): every rank validates `config` and checks
  // that all ranks hold the same one; an error on any rank is the same moe::Error on every rank.
  // Read: num_experts, top_k, the capacity options, exchange, overlap_chunks, wire, ranks_per_node,
  // check_finite, label. With chunks > 1 (or `in_flight_work`: work run beside the first chunk)
  // it starts a communication thread, which needs MPI_THREAD_SERIALIZED or better.
  Dispatcher(const MoeConfig& config, comm::Communicator& ep_comm, bool in_flight_work = false);
  ~Dispatcher();

  const MoeConfig& config() const { return config_; }
  int ep_rank() const { return comm_.rank(); }
  int ep_size() const { return comm_.size(); }
  std::int64_t local_experts() const { return num_experts_of(ep_rank(), config_.num_experts, ep_size()); }
  std::int64_t first_expert() const { return first_expert_of(ep_rank(), config_.num_experts, ep_size()); }
  // Chunks the next plan will use: overlap_chunks, or what `auto` chose after the first forward.
  int chunks() const { return chunks_; }
  const comm::NodeTopology& topology() const { return topology_; }

  // Collective. Ranks the assignments, decides capacity and drops, and agrees on the counts; an
  // expert index out of range or a wrong length on any rank is reported by all. `local_error` is
  // one the caller found itself ("" for none): it travels with the counts, so it costs nothing
  // extra. `reserve`, when given, runs once the sizes are known and before the ranks agree that
  // every buffer could grow, so a caller's allocation failure is agreed too.
  void plan(DispatchContext& ctx, const Routing& routing, const std::string& local_error = {},
            FunctionRef<void()> reserve = {});

  // Pipelined forward: x [T, d] -> y [T, d] (overwritten), calling `experts` on each chunk.
  // `timer` times the phases into ctx.stats(); `in_flight` runs while the first chunk travels.
  // `group_sums`: this rank's values in, their sums over the group (rank order) out, carried by
  // the statistics' allgather. Preconditions (checked by plan's caller): x and y hold T rows.
  void forward(DispatchContext& ctx, std::span<const float> x, std::span<float> y,
               ExpertFunction experts, PhaseTimer& timer, InFlightWork in_flight = {},
               std::span<double> group_sums = {});
  // Collective, before a pipelined backward: checks dy [T, d] and grows the workspace; a
  // `local_error` of the caller's and a failure of `reserve` are agreed like the plan's.
  void prepare_backward(DispatchContext& ctx, std::span<const float> dy, std::string local_error = {},
                        FunctionRef<void()> reserve = {});
  // Pipelined backward of ctx's forward: dy [T, d] -> dx [T, d] (overwritten) and d_weight [T*k],
  // the gradient of the combine weights (zero for a dropped choice). `experts` gets the saved
  // input rows and their output gradients, and writes their input gradients. `timer` times into
  // ctx.backward_phase_seconds() (the caller makes it, after prepare_backward).
  void backward(DispatchContext& ctx, std::span<const float> dy, std::span<float> dx,
                std::span<float> d_weight, ExpertFunction experts, PhaseTimer& timer,
                InFlightWork in_flight = {});

  // Split forward: returns ctx.expert_rows().
  std::span<const float> dispatch(DispatchContext& ctx, std::span<const float> x);
  // expert_output in the layout of ctx.expert_rows(); y [T, d] overwritten.
  void combine(DispatchContext& ctx, std::span<const float> expert_output, std::span<float> y,
               std::span<double> group_sums = {});
  // Split backward: returns the gradients of the experts' outputs, in the layout of
  // ctx.expert_rows() (valid until the next call on this dispatcher).
  std::span<const float> dispatch_backward(DispatchContext& ctx, std::span<const float> dy);
  // grad_rows: the gradients of the experts' inputs in that layout; dx [T, d] overwritten.
  void combine_backward(DispatchContext& ctx, std::span<const float> grad_rows,
                        std::span<float> dx, std::span<float> d_weight);

  // Collective: if any rank has a `problem` (non-empty), every rank throws the same moe::Error;
  // `phase` names the step for the watchdog.
  void agree(const char* phase, const std::string& problem);

 private:
  // Work on chunk c once its rows arrived (receive order) and before they go back.
  using ChunkWork = FunctionRef<void(int)>;
  void grow_receive_side(DispatchContext& ctx);
  double run_pipeline(DispatchContext& ctx, const std::byte* send, std::byte* returned,
                      ChunkWork work, PhaseTimer& timer, const char* out_phase,
                      const char* back_phase, double& fill_seconds, InFlightWork in_flight);
  double hierarchical_dispatch(DispatchContext& ctx, std::span<const float> x);
  double hierarchical_combine(DispatchContext& ctx, std::span<float> y);
  double hierarchical_dispatch_gradient(DispatchContext& ctx, std::span<const float> dy);
  double hierarchical_combine_gradient(DispatchContext& ctx, std::span<float> dx, std::span<float> d_weight);
  double run_hierarchical_forward(DispatchContext& ctx, std::span<const float> x,
                                  std::span<float> y, ChunkWork work, PhaseTimer& timer);
  double run_hierarchical_backward(DispatchContext& ctx, std::span<const float> dy,
                                   std::span<float> dx, std::span<float> d_weight, ChunkWork work,
                                   PhaseTimer& timer);
  // Per chunk: bytes to each destination, then bytes from each source; the way back swaps them.
  void set_chunk_bytes(const DispatchPlan& plan);
  std::span<const std::size_t> chunk_out_bytes(int c) const;
  std::span<const std::size_t> chunk_in_bytes(int c) const;
  // Collective: every chunk in turn on this thread (the split passes), outward from the send
  // layout into the receive layout, or back. Returns the time it took.
  double exchange_chunks(const DispatchPlan& plan, const std::byte* from, std::byte* to, bool outward,
                         const char* phase);
  void forward_chunk(DispatchContext& ctx, int c, ExpertFunction experts);
  void backward_chunk(DispatchContext& ctx, int c, ExpertFunction experts);
  void set_phase(const char* phase);
  void start_worker();
  void reduce_statistics(DispatchContext& ctx, double exchange_seconds, std::span<double> group_sums);
  comm::InterNodeTraffic internode_traffic(const DispatchContext& ctx) const;
  WireRows wire(std::byte* data) const { return {data, config_.d_model, config_.wire_format()}; }
  std::size_t wire_row_bytes() const;
  std::span<float> received_floats(const DispatchContext& ctx);

  MoeConfig config_;
  comm::Communicator& comm_;
  PlanAgreement agreement_;  // the plan and the ranks' agreement on it, shared with the device layer
  PlanStatistics statistics_;  // its statistics, gathered as the device layer gathers them
  comm::NodeTopology topology_;
  std::unique_ptr<comm::HierarchicalExchange> hierarchical_;  // exchange = hierarchical only
  int chunks_ = 1;
  std::int64_t calls_ = 0;        // forwards and backwards so far, for diagnostics
  bool auto_pending_ = false;     // overlap_chunks is auto and not yet chosen
  double empty_exchange_seconds_ = 0;
  // Only when chunks_ > 1 (or in-flight work): the communication thread, on a communicator of its
  // own that waits by sleeping, so the thread leaves the core to the computation it overlaps.
  std::unique_ptr<comm::Communicator> worker_comm_;
  std::unique_ptr<ExchangeWorker> worker_;

  // Workspace reused by every call: it grows to the largest batch and then stays.
  std::vector<std::byte> send_wire_, recv_wire_;
  std::vector<float> expert_rows_, expert_grad_rows_;
  std::vector<float> d_weight_;           // split backward: from dispatch_backward to combine_backward
  std::vector<float> row_values_;         // hierarchical: each send row's weight, then its dy · output
  std::vector<std::int64_t> peer_rows_;   // hierarchical: rows to each rank, then from each
  std::vector<std::size_t> chunk_bytes_;  // per chunk: send[P], recv[P] of dispatch; same reversed back
  std::vector<std::uint64_t> tickets_;
};

}  // namespace moe
