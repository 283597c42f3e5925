// The MoE layer of moe-ep's public API (<moe_ep/moe_ep.hpp>): the runtime's moe::MoeLayer behind a
// pointer, so a trainer including this sees neither the dispatch plan, nor the exchange thread,
// nor oneDNN. See SPEC.md for what the layer computes.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "comm/communicator.hpp"
#include "runtime/config.hpp"
#include "runtime/layer_tensors.hpp"
#include "runtime/parallel_groups.hpp"
#include "runtime/stats.hpp"

namespace moe {
class MoeLayer;
class ForwardContext;
}  // namespace moe

namespace moe_ep {

using Config = moe::MoeConfig;
using ForwardStats = moe::ForwardStats;
using LayerTensor = moe::LayerTensor;
using Placement = moe::Placement;

// What one forward keeps for its backward, and what it decided. Keep one per micro-batch in
// flight; reusing one for batches of the same shape allocates nothing.
class ForwardContext {
 public:
  ForwardContext();
  ~ForwardContext();
  ForwardContext(ForwardContext&&) noexcept;
  ForwardContext& operator=(ForwardContext&&) noexcept;

  // The two auxiliary losses (SPEC.md section 7), identical on every rank of the group.
  double aux_loss() const;
  double z_loss() const;
  // Group-wide counts before and after dropping, drops, bytes and phase times (SPEC.md section 10).
  const ForwardStats& stats() const;

  // The routing of this rank's tokens (SPEC.md section 3): choice j of token t is expert
  // selected_experts()[t*k + j] with weight selected_weights()[t*k + j] (after normalize_topk and
  // scaling), and kept(t, j) says whether capacity kept it.
  std::int64_t num_tokens() const;
  std::span<const std::int32_t> selected_experts() const;
  std::span<const float> selected_weights() const;
  bool kept(std::int64_t t, std::int64_t j) const;

 private:
  friend class Layer;
  std::unique_ptr<moe::ForwardContext> impl_;
};

class Layer {
 public:
  // Collective over `ep_comm` (the expert-parallel group; it must outlive the layer): every rank
  // validates `config`, and an error on any rank is the same moe::Error on every rank.
  // Parameters start at zero: set them through parameters(), init_parameters() or a checkpoint.
  Layer(const Config& config, moe::comm::Communicator& ep_comm);
  ~Layer();
  Layer(Layer&&) noexcept;
  Layer& operator=(Layer&&) noexcept;

  const Config& config() const;
  // The experts this rank owns: global experts first_expert() ... first_expert() + local_experts() - 1.
  std::int64_t local_experts() const;
  std::int64_t first_expert() const;

  // This rank's trainable tensors with their SPEC.md section 2 names (experts by global index),
  // shapes, placement, and spans over the layer's own values and gradients: what a trainer hands
  // its optimizer and its checkpoint. The spans stay valid as long as the layer.
  std::vector<LayerTensor> parameters();
  // Tensors no gradient trains (the sigmoid gate's selection bias), replicated.
  std::vector<LayerTensor> buffers();
  // nn.Linear's initialisation keyed by tensor name, the same on any rank count.
  void init_parameters(std::uint64_t seed);
  // Call after writing parameters through parameters()' spans (an optimizer step, a checkpoint
  // load): with compute = bf16 the next forward then remakes the experts' bf16 copies.
  void parameters_changed();

  // Collective. y = layer(x) for this rank's tokens: x and y [T, d] row-major (T may differ
  // between ranks and be 0). Fills `ctx` with what backward needs.
  void forward(std::span<const float> x, std::span<float> y, ForwardContext& ctx);
  // Collective. A forward for inference: no context to keep, nothing saved for a backward
  // beyond the one workspace the layer reuses. Returns the forward's statistics.
  const ForwardStats& infer(std::span<const float> x, std::span<float> y);
  // Collective. The backward of the forward that filled `ctx` (SPEC.md section 8), with the same
  // x; writes dx and ADDS to the gradients of parameters() (micro-batches accumulate).
  void backward(std::span<const float> x, std::span<const float> dy, std::span<float> dx,
                ForwardContext& ctx, double grad_aux = 1.0, double grad_z = 1.0);
  void zero_grad();
  // Collective over both groups: the router's and shared expert's gradients summed over the
  // expert-parallel group, every gradient reduced over the data-parallel replicas.
  void reduce_gradients(moe::ParallelGroups& groups, moe::GradReduction reduction);
  // Auxiliary-loss-free balancing (SPEC.md section 3) from the counts of the forward in `ctx`,
  // summed over the data-parallel replicas so the bias (replicated over the whole world) moves
  // the same way everywhere. Collective over groups.dp when it has more than one rank; nothing to
  // do unless gate = sigmoid and bias_update_rate > 0.
  void update_selection_bias(const ForwardContext& ctx, moe::ParallelGroups& groups);

 private:
  std::unique_ptr<moe::MoeLayer> impl_;
  ForwardContext inference_;
};

}  // namespace moe_ep
