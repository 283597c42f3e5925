// The expert-parallel MoE layer: router, dispatch plan, exchange, the local experts, exchange back
// and combine (SPEC.md sections 3-8). Every rank of the expert-parallel communicator constructs one
// and calls forward and backward together; each rank passes only its own tokens and hosts only its
// own experts.
//
// With overlap_chunks > 1 the exchanges run on a communication thread (ExchangeWorker), chunk by
// chunk, while the calling thread computes the chunk that already arrived. Drops are decided on
// the whole batch first, so chunking never changes which assignments are kept.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "comm/communicator.hpp"
#include "comm/hierarchical_exchange.hpp"
#include "comm/node_topology.hpp"
#include "experts/expert_shard.hpp"
#include "experts/grouped_ffn.hpp"
#include "runtime/config.hpp"
#include "runtime/dispatch_plan.hpp"
#include "runtime/exchange_worker.hpp"
#include "runtime/global_capacity.hpp"
#include "runtime/permute.hpp"
#include "runtime/router.hpp"
#include "runtime/stats.hpp"

namespace moe {

// What one forward produced besides its output.
struct ForwardResult {
  double aux_loss = 0;  // identical on every rank of the group
  double z_loss = 0;
  ForwardStats stats;
};

// Everything a forward keeps for its backward: routing, plan, saved expert activations. Keep one
// per micro-batch in flight; reusing one across calls of the same shape allocates nothing.
class ForwardContext {
 public:
  const ForwardResult& result() const { return result_; }
  // The routing of this rank's tokens (SPEC.md section 3): choice j of token t is expert
  // selected_experts()[t*k + j] with weight selected_weights()[t*k + j] (after normalize_topk
  // and scaling); kept(t, j) says whether capacity kept it.
  std::int64_t num_tokens() const { return plan_.num_tokens; }
  std::span<const std::int32_t> selected_experts() const {
    return std::span<const std::int32_t>(router_.expert).first(static_cast<std::size_t>(plan_.num_tokens * plan_.top_k));
  }
  std::span<const float> selected_weights() const {
    return std::span<const float>(router_.weight).first(static_cast<std::size_t>(plan_.num_tokens * plan_.top_k));
  }
  bool kept(std::int64_t t, std::int64_t j) const { return plan_.send_row[static_cast<std::size_t>(t * plan_.top_k + j)] >= 0; }
  // Wall time of each phase of the last backward on this context (the same phases walked in
  // reverse), and the time its exchanges took (overlapped with compute or not).
  const std::array<double, kNumPhases>& backward_phase_seconds() const { return backward_seconds_; }
  double backward_exchange_seconds() const { return backward_exchange_seconds_; }
  // The wait for the first chunk of the last backward's exchange (see ForwardStats::fill_seconds).
  double backward_fill_seconds() const { return backward_fill_seconds_; }

 private:
  friend class MoeLayer;
  RouterOutput router_;
  DispatchPlan plan_;
  std::vector<float> expert_input_;            // received rows in expert order, every chunk
  std::vector<experts::FfnActivations> ffn_;   // one per chunk
  experts::FfnActivations shared_ffn_;         // the shared expert's, over this rank's tokens
  std::vector<std::byte> returned_;            // expert outputs back home, send order, wire format
  comm::HierarchicalRoute route_;              // exchange = hierarchical: what its backward needs
  ForwardResult result_;
  std::array<double, kNumPhases> backward_seconds_{};
  double backward_exchange_seconds_ = 0;
  double backward_fill_seconds_ = 0;
};

class MoeLayer {
 public:
  // Collective over `ep_comm`: every rank validates `config`; an error on any rank becomes the
  // same moe::Error on every rank. Parameters start at zero; set them through gate_weight() and
  // experts(). The communicator must outlive the layer. With overlap_chunks != 1 the layer starts
  // a communication thread, which needs MPI_THREAD_SERIALIZED or better from MPI.
  MoeLayer(const MoeConfig& config, comm::Communicator& ep_comm);
  ~MoeLayer();

  const MoeConfig& config() const { return config_; }
  int ep_rank() const { return comm_.rank(); }
  int ep_size() const { return comm_.size(); }
  // The experts this rank owns (SPEC.md section 1: contiguous, as even as possible; 0 when there
  // are more ranks than experts) and the global index of the first.
  std::int64_t local_experts() const { return num_experts_of(ep_rank(), config_.num_experts, ep_size()); }
  std::int64_t first_expert() const { return first_expert_of(ep_rank(), config_.num_experts, ep_size()); }
  // Chunks the next call will use: overlap_chunks, or what `auto` chose after the first call.
  int chunks() const { return chunks_; }
  // The ranks of the group by node (ranks_per_node, or the hosts).
  const comm::NodeTopology& topology() const { return topology_; }

  // The router's weight [E, d], replicated on every rank.
  std::span<float> gate_weight() { return gate_weight_; }
  std::span<const float> gate_weight() const { return gate_weight_; }
  // This rank's experts (local index e is global expert first_expert() + e).
  experts::ExpertShard& experts() { return experts_; }
  const experts::ExpertShard& experts() const { return experts_; }
  // The shared expert (one expert of hidden size d_shared_hidden, replicated on every rank; empty
  // when the layer has none).
  experts::ExpertShard& shared_expert() { return shared_expert_; }
  const experts::ExpertShard& shared_expert() const { return shared_expert_; }
  // The selection bias of the sigmoid gate, gate.e_score_correction_bias [E], replicated (zeros
  // until set; unused with softmax).
  std::span<float> selection_bias() { return selection_bias_; }
  std::span<const float> selection_bias() const { return selection_bias_; }

  // Call after writing expert or shared-expert weights through spans kept from earlier (an
  // optimizer's, a checkpoint loader's): with compute=bf16 the next forward then remakes their
  // bf16 copies instead of running on the old ones. Not needed after writing through spans
  // fetched afresh from experts() or shared_expert() (see ExpertShard::version).
  void parameters_changed();

  // Auxiliary-loss-free balancing (SPEC.md section 3): after a forward, moves the selection bias
  // by bias_update_rate · sign(mean − count) per expert, from that forward's group-wide counts.
  // Not collective: every rank holds the same counts, so the bias stays identical everywhere.
  void update_selection_bias(const ForwardResult& result);

  // Collective. x and y are [T, d] row-major for this rank's T tokens (T may differ between ranks
  // and may be 0). A bad shape on any rank is reported by every rank as the same moe::Error.
  const ForwardResult& forward(std::span<const float> x, std::span<float> y, ForwardContext& ctx);

  // Collective. The backward of the forward that filled `ctx` (SPEC.md section 8): x is the same
  // input that forward took, dy [T, d] the gradient of the output; writes dx [T, d]. ADDS this
  // rank's contribution to gate_weight_grad() and the full gradient of this rank's experts (over
  // the rows every rank routed to them) to expert_grads(), so micro-batches accumulate.
  // grad_aux and grad_z are the upstream gradients of the two losses. Contexts of several forwards
  // may be walked back in any order.
  void backward(std::span<const float> x, std::span<const float> dy, std::span<float> dx,
                ForwardContext& ctx, double grad_aux = 1.0, double grad_z = 1.0);

  // Gradients accumulated by backward. The router's is this rank's contribution only: the full
  // gradient is its sum over the ranks (see reduce_gradients in runtime/parallel_groups.hpp).
  std::span<float> gate_weight_grad() { return gate_weight_grad_; }
  std::span<const float> gate_weight_grad() const { return gate_weight_grad_; }
  experts::ExpertShard& expert_grads() { return expert_grads_; }
  const experts::ExpertShard& expert_grads() const { return expert_grads_; }
  // The shared expert's gradient: this rank's contribution (summed over ranks like the router's).
  experts::ExpertShard& shared_expert_grads() { return shared_expert_grads_; }
  const experts::ExpertShard& shared_expert_grads() const { return shared_expert_grads_; }
  void zero_grad();

 private:
  // Work done on chunk c once its rows arrived (receive order) and before they go back.
  using ChunkWork = void (*)(MoeLayer& layer, ForwardContext& ctx, int c);

  // Route, capacity and drops, and the exchange of counts (or of the padded slot count). A local
  // error travels with the counts, so every rank raises it together. Returns a failure met after
  // that exchange ("" for none), for the next agreement to report.
  std::string plan_dispatch(std::span<const float> x, std::span<const float> y, ForwardContext& ctx);
  // Sends chunk after chunk of `send` (send order) to the experts' ranks, runs `in_flight`
  // (work that needs no remote rows: the shared expert) while the first chunk travels, runs `work`
  // on each chunk as it arrives, and brings the results back into `returned` (send order).
  // Returns the time spent in exchanges; sets `fill_seconds` to the wait for the first chunk.
  template <class InFlight>
  double run_pipeline(ForwardContext& ctx, const std::byte* send, std::byte* returned,
                      ChunkWork work, PhaseTimer& timer, const char* out_phase,
                      const char* back_phase, double& fill_seconds, InFlight&& in_flight);
  // Grows every buffer the pipeline writes (before the payload moves, so a failure is agreed).
  void grow_receive_side(ForwardContext& ctx);
  // Tells the communicator what the next collective is, for the watchdog's diagnostic.
  void set_phase(const char* phase);
  // At construction: every rank's configuration must be the same (names the differing fields).
  void check_consistency();
  // One allgather of every rank's partial sums: losses, counts, bytes, and (for auto chunks) the
  // timings every rank decides from.
  void reduce_statistics(ForwardContext& ctx, double exchange_seconds);
  void choose_auto_chunks(double exchange_seconds, double compute_seconds, const ForwardStats& stats);
  // exchange = hierarchical (runtime/moe_layer_hierarchical.cpp): the exchanges and expert work of
  // one pass, in place of run_pipeline and the combine; they return the time in exchanges.
  double run_hierarchical_forward(ForwardContext& ctx, std::span<const float> x, std::span<float> y,
                                  PhaseTimer& timer);
  double run_hierarchical_backward(ForwardContext& ctx, std::span<const float> dy,
                                   std::span<float> dx, PhaseTimer& timer);
  // Payload this rank sent to other nodes in the forward of `ctx` (both exchanges).
  comm::InterNodeTraffic internode_traffic(const ForwardContext& ctx) const;
  static void forward_chunk(MoeLayer& layer, ForwardContext& ctx, int c);
  static void backward_chunk(MoeLayer& layer, ForwardContext& ctx, int c);
  WireRows wire(std::byte* data) const { return {data, config_.d_model, config_.wire_format()}; }
  std::size_t wire_row_bytes() const;

  MoeConfig config_;
  comm::Communicator& comm_;
  std::vector<float> gate_weight_;
  std::vector<float> selection_bias_;
  experts::ExpertShard experts_;
  experts::ExpertShard shared_expert_;
  std::vector<float> gate_weight_grad_;
  experts::ExpertShard expert_grads_;
  experts::ExpertShard shared_expert_grads_;
  GlobalCapacity global_capacity_;
  comm::NodeTopology topology_;
  std::unique_ptr<comm::HierarchicalExchange> hierarchical_;  // exchange = hierarchical only
  int chunks_ = 1;
  std::int64_t calls_ = 0;        // forwards and backwards so far, for diagnostics
  bool auto_pending_ = false;     // overlap_chunks is auto and not yet chosen
  double empty_exchange_seconds_ = 0;
  // Only when chunks_ > 1: the communication thread, on a communicator of its own that waits by
  // sleeping, so the thread leaves the core to the computation it overlaps.
  std::unique_ptr<comm::Communicator> worker_comm_;
  std::unique_ptr<ExchangeWorker> worker_;
  void start_worker();

  // Workspace reused by every call: it grows to the largest batch and then stays.
  std::vector<std::byte> send_wire_, recv_wire_;
  std::vector<float> expert_rows_, expert_grad_rows_;
  std::vector<float> shared_rows_;             // the shared expert's output, or its dx
  std::array<std::int64_t, 2> shared_offsets_{};  // {0, T}: one expert over every local token
  std::vector<float> d_weight_, d_logits_;
  std::vector<float> row_values_;  // hierarchical: each send row's weight, then its dy · output
  std::vector<std::int64_t> peer_rows_;  // hierarchical: rows to each rank, then from each
  std::vector<std::int64_t> count_send_, count_recv_, recv_counts_;
  std::vector<std::size_t> chunk_bytes_;  // per chunk: send[P], recv[P] of dispatch; same reversed back
  std::vector<std::uint64_t> tickets_;
  std::vector<double> stat_local_, stat_all_, prob_sum_;
};

}  // namespace moe
