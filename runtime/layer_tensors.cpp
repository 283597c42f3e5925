#include "runtime/layer_tensors.hpp"

#include "runtime/layer_case.hpp"
#include "runtime/moe_layer.hpp"
#include "runtime/trace.hpp"

namespace moe {

std::vector<LayerTensor> layer_parameters(MoeLayer& layer) {
  const MoeConfig& c = layer.config();
  std::vector<LayerTensor> tensors;
  tensors.push_back({"gate.weight", {c.num_experts, c.d_model}, layer.gate_weight(), layer.gate_weight_grad(),
                     Placement::replicated});
  experts::ExpertShard& shared = layer.shared_expert();
  for (std::int64_t e = 0; e < shared.num_experts(); ++e) {
    for (std::string_view p : experts::expert_param_names(c.activation)) {
      tensors.push_back({std::string(kSharedPrefix) + std::string(p), shared.param_shape(p), shared.param(e, p),
                         layer.shared_expert_grads().param(e, p), Placement::replicated});
    }
  }
  for (std::int64_t e = 0; e < layer.local_experts(); ++e) {
    const std::string prefix = "experts." + std::to_string(layer.first_expert() + e) + ".";
    for (std::string_view p : experts::expert_param_names(c.activation)) {
      tensors.push_back({prefix + std::string(p), layer.experts().param_shape(p), layer.experts().param(e, p),
                         layer.expert_grads().param(e, p), Placement::expert});
    }
  }
  return tensors;
}

std::vector<LayerTensor> layer_buffers(MoeLayer& layer) {
  if (layer.config().gate != GateKind::sigmoid) return {};
  return {{std::string(kSelectionBias), {layer.config().num_experts}, layer.selection_bias(), {},
           Placement::replicated}};
}

namespace {

void reduce(comm::Communicator& group, std::span<float> values, float scale) {
  if (group.size() > 1) group.allreduce(values, comm::ReduceOp::sum);
  if (scale != 1.0f) {
    for (float& v : values) v *= scale;
  }
}

}  // namespace

void reduce_gradients(std::span<const LayerTensor> tensors, ParallelGroups& groups, GradReduction reduction) {
  const trace::Span traced("gradient reduction", "gradients");
  const float dp_scale =
      reduction == GradReduction::mean ? 1.0f / static_cast<float>(groups.dp_size) : 1.0f;
  for (const LayerTensor& t : tensors) {
    // A replicated tensor saw only this rank's tokens: sum over the group's, then the replicas.
    if (t.placement == Placement::replicated) reduce(*groups.ep, t.grad, 1.0f);
    reduce(*groups.dp, t.grad, dp_scale);
  }
}

}  // namespace moe
