// The model moe-train trains: a residual stack of pre-norm blocks and a linear head,
//
//   h_0 = x;  h_{i+1} = h_i + block_i(LayerNorm_i(h_i));  prediction = head(LayerNorm(h_L))
//
// where each block is an expert-parallel MoeLayer, or (the dense baseline) one dense FFN of hidden
// size k·h + h_s (h_s: the shared expert's, if any), which has the same active parameters per
// token. The loss is the mean squared error of
// the prediction plus the MoE layers' auxiliary losses.
//
// Data parallelism: each rank holds its own tokens. The loss of an expert-parallel group is over
// its tokens; the objective is the mean over the data-parallel replicas, so replicated gradients
// are summed over the group and averaged over the replicas (reduce_gradients).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "apps/layer_norm.hpp"
#include "comm/communicator.hpp"
#include "experts/grouped_ffn.hpp"
#include "runtime/moe_layer.hpp"
#include "runtime/parallel_groups.hpp"

namespace moe::apps {

enum class BlockKind { moe, dense };

// The dense baseline's hidden size: the active hidden units of a token in the MoE layer, k·h + h_s.
inline std::int64_t dense_hidden(const MoeConfig& c) { return c.top_k * c.d_hidden + c.d_shared_hidden; }

struct ModelConfig {
  MoeConfig layer;              // the MoE layers' settings (and d, h, k for the dense baseline)
  std::int64_t num_layers = 2;
  std::int64_t d_out = 8;
  BlockKind kind = BlockKind::moe;
};

// One trainable tensor of this rank, named as in a checkpoint.
struct Parameter {
  std::string name;                  // "layers.0.moe.experts.3.w1.weight", "head.bias", ...
  std::vector<std::int64_t> shape;
  std::span<float> value;
  std::span<float> grad;
  bool expert = false;               // owned by this rank's expert-parallel position, else replicated
};

// A tensor of the model's state that no gradient trains, replicated on every rank and saved in a
// checkpoint without optimizer moments: the sigmoid gate's selection bias
// "layers.{i}.moe.gate.e_score_correction_bias", moved by update_selection_biases.
struct Buffer {
  std::string name;
  std::vector<std::int64_t> shape;
  std::span<float> value;
};

// What one forward measured. Group-level figures (aux, drops, counts) are the same on every rank
// of an expert-parallel group.
struct ForwardSummary {
  double sum_squared_error = 0;      // this rank's tokens
  double aux_loss = 0;               // summed over the MoE layers
  double z_loss = 0;
  std::int64_t assignments = 0;      // top-k assignments over the layers (group)
  std::int64_t dropped = 0;          // of which dropped (group)
  double load_max_over_mean = 0;     // the busiest expert's assignments over the mean, averaged
                                     // over the MoE layers (group; 1 when balanced)
};

class TrainModel {
 public:
  // Collective over `groups.ep` (MoE layers validate their configuration on every rank).
  // Parameters start at zero: call init().
  TrainModel(const ModelConfig& config, ParallelGroups& groups, comm::Communicator& world);
  ~TrainModel();
  TrainModel(const TrainModel&) = delete;
  TrainModel& operator=(const TrainModel&) = delete;

  const ModelConfig& config() const { return config_; }
  // Every parameter this rank holds, in a fixed order (replicated ones and this rank's experts).
  std::vector<Parameter>& parameters() { return params_; }
  // Every buffer (all replicated), in a fixed order.
  std::vector<Buffer>& buffers() { return buffers_; }

  // PyTorch's nn.Linear/nn.LayerNorm initialisation from the counter-based generator, keyed by
  // parameter name: independent of the rank count.
  void init(std::uint64_t seed);

  // Call after writing the parameters through parameters() (an optimizer step, a checkpoint
  // load): the expert weights' bf16 copies (compute=bf16) are then remade by the next forward.
  void parameters_changed();

  // Collective. Forward of this rank's tokens x [T, d] against target [T, d_out]; keeps what
  // backward needs. `group_tokens` is the token count of this rank's expert-parallel group (the
  // MSE of the group is taken over it).
  ForwardSummary forward(std::span<const float> x, std::span<const float> target,
                         std::int64_t group_tokens);

  // Collective over the world. Auxiliary-loss-free balancing (SPEC.md section 3) after a training
  // forward: moves each MoE layer's selection bias by bias_update_rate · sign(mean − count), from
  // the counts of the last forward summed over the data-parallel replicas, so the bias, which is
  // replicated over the whole world, stays identical on every rank. Nothing to do (and no
  // collective) when bias_update_rate is 0 or the model is dense.
  void update_selection_biases();

  // Collective. Backward of the last forward: zeroes, then fills every gradient with this rank's
  // contribution (a MoE layer's experts get theirs from the whole expert-parallel group).
  void backward();

  // Collective. Completes the gradients as the objective (the mean over the data-parallel
  // replicas of each group's loss) requires: replicated ones summed over the expert-parallel
  // group and averaged over the replicas, experts averaged over their data-parallel group.
  void reduce_gradients();

  // The predictions of the last forward [T, d_out], and each block's input after its LayerNorm
  // [T, d] (what the router saw).
  std::span<const float> predictions() const { return pred_; }
  std::span<const float> block_input(std::int64_t layer) const;
  // Block `layer`'s output in the last forward [T, d] (the MoE layer's, before the residual add).
  std::span<const float> block_output(std::int64_t layer) const;
  // The MoE layer of block `layer` (nullptr for the dense baseline) and its last forward.
  const MoeLayer* moe_layer(std::int64_t layer) const;
  const ForwardContext& moe_context(std::int64_t layer) const;

 private:
  struct Block;
  void add_replicated(std::string name, std::vector<std::int64_t> shape, std::size_t offset);
  void add_moe_parameters(const std::string& prefix, MoeLayer& layer);

  ModelConfig config_;
  ParallelGroups& groups_;
  comm::Communicator& world_;
  std::vector<std::unique_ptr<Block>> blocks_;
  // LayerNorms and the head live in one flat array (and their gradients in another) so their
  // gradients take one all-reduce.
  std::vector<float> flat_values_, flat_grads_;
  std::vector<Parameter> params_;
  std::vector<Buffer> buffers_;
  // The final LayerNorm and the head: positions in params_.
  std::size_t final_norm_weight_ = 0, final_norm_bias_ = 0, head_weight_ = 0, head_bias_ = 0;
  // The selection-bias update's counts [layers, E], summed over the data-parallel replicas, and
  // the result handed to each layer's update.
  std::vector<std::int64_t> bias_counts_;
  ForwardResult bias_result_;
  // Per-batch state of the last forward.
  std::int64_t tokens_ = 0, group_tokens_ = 0;
  std::vector<std::vector<float>> residual_;   // h_0 .. h_L
  std::vector<float> final_norm_out_, pred_, target_;
  LayerNormSaved final_norm_saved_;
  std::vector<float> grad_residual_, grad_block_in_, grad_block_out_, grad_norm_in_, scratch_;
};

}  // namespace moe::apps
