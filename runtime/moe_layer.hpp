// The expert-parallel MoE layer (SPEC.md sections 3-8): the router, a Dispatcher
// (runtime/dispatcher.hpp: plan, exchanges, combine) and this rank's experts, which the Dispatcher's
// pipeline calls chunk by chunk. Every rank of the expert-parallel communicator constructs one and
// calls forward and backward together; each rank passes only its own tokens and hosts only its
// own experts.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "comm/communicator.hpp"
#include "comm/node_topology.hpp"
#include "experts/expert_shard.hpp"
#include "experts/grouped_ffn.hpp"
#include "runtime/config.hpp"
#include "runtime/dispatcher.hpp"
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
  std::int64_t num_tokens() const { return dispatch_.num_tokens(); }
  std::span<const std::int32_t> selected_experts() const {
    return std::span<const std::int32_t>(router_.expert).first(static_cast<std::size_t>(num_tokens() * top_k()));
  }
  std::span<const float> selected_weights() const {
    return std::span<const float>(router_.weight).first(static_cast<std::size_t>(num_tokens() * top_k()));
  }
  bool kept(std::int64_t t, std::int64_t j) const { return dispatch_.kept(t, j); }
  // Wall time of each phase of the last backward on this context (the same phases walked in
  // reverse), and the time its exchanges took (overlapped with compute or not).
  const std::array<double, kNumPhases>& backward_phase_seconds() const { return dispatch_.backward_phase_seconds(); }
  double backward_exchange_seconds() const { return dispatch_.backward_exchange_seconds(); }
  // The wait for the first chunk of the last backward's exchange (see ForwardStats::fill_seconds).
  double backward_fill_seconds() const { return dispatch_.backward_fill_seconds(); }
  // The plan and the rows of the Dispatcher underneath.
  const DispatchContext& dispatch() const { return dispatch_; }

 private:
  friend class MoeLayer;
  std::int64_t top_k() const { return dispatch_.plan().top_k; }
  RouterOutput router_;
  DispatchContext dispatch_;
  std::vector<experts::FfnActivations> ffn_;   // one per chunk
  experts::FfnActivations shared_ffn_;         // the shared expert's, over this rank's tokens
  ForwardResult result_;
};

class MoeLayer {
 public:
  // Collective over `ep_comm`: every rank validates `config`; an error on any rank becomes the
  // same moe::Error on every rank. Parameters start at zero; set them through gate_weight() and
  // experts(). The communicator must outlive the layer. With overlap_chunks != 1 the layer starts
  // a communication thread, which needs MPI_THREAD_SERIALIZED or better from MPI.
  MoeLayer(const MoeConfig& config, comm::Communicator& ep_comm);
  ~MoeLayer();

  const MoeConfig& config() const { return dispatcher_.config(); }
  int ep_rank() const { return dispatcher_.ep_rank(); }
  int ep_size() const { return dispatcher_.ep_size(); }
  // The experts this rank owns (SPEC.md section 1: contiguous, as even as possible; 0 when there
  // are more ranks than experts) and the global index of the first.
  std::int64_t local_experts() const { return dispatcher_.local_experts(); }
  std::int64_t first_expert() const { return dispatcher_.first_expert(); }
  // Chunks the next call will use: overlap_chunks, or what `auto` chose after the first call.
  int chunks() const { return dispatcher_.chunks(); }
  // The ranks of the group by node (ranks_per_node, or the hosts).
  const comm::NodeTopology& topology() const { return dispatcher_.topology(); }

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
  // The losses of SPEC.md section 7 from the group's counts and the summed loss terms.
  void set_losses(ForwardContext& ctx) const;

  Dispatcher dispatcher_;  // first: it validates the configuration
  std::vector<float> gate_weight_;
  std::vector<float> selection_bias_;
  experts::ExpertShard experts_;
  experts::ExpertShard shared_expert_;
  std::vector<float> gate_weight_grad_;
  experts::ExpertShard expert_grads_;
  experts::ExpertShard shared_expert_grads_;

  // Workspace reused by every call: it grows to the largest batch and then stays.
  std::vector<float> shared_rows_;             // the shared expert's output, or its dx
  std::array<std::int64_t, 2> shared_offsets_{};  // {0, T}: one expert over every local token
  std::vector<float> d_weight_, d_logits_;
  std::vector<double> loss_sums_;              // [E+1] Σ_t p_{t,e}, then Σ_t (logsumexp z_t)²
};

}  // namespace moe
