#include "runtime/parallel_groups.hpp"

#include <string>

#include "runtime/error.hpp"
#include "runtime/moe_layer.hpp"
#include "runtime/trace.hpp"

namespace moe {

ParallelGroups ParallelGroups::create(comm::Communicator& world, int ep_size) {
  collectively(world, [&] {
    if (ep_size < 1 || world.size() % ep_size != 0) {
      throw Error("the world of " + std::to_string(world.size()) +
                  " ranks does not split into expert-parallel groups of " +
                  std::to_string(ep_size) + " (world = ep_size x dp_size)");
    }
  });
  ParallelGroups groups;
  groups.ep_size = ep_size;
  groups.dp_size = world.size() / ep_size;
  const int rank = world.rank();
  groups.ep = world.split(rank / ep_size, rank);
  groups.dp = world.split(rank % ep_size, rank);
  return groups;
}

namespace {

void reduce(comm::Communicator& group, std::span<float> values, float scale) {
  if (group.size() > 1) group.allreduce(values, comm::ReduceOp::sum);
  if (scale != 1.0f) {
    for (float& v : values) v *= scale;
  }
}

}  // namespace

void reduce_gradients(MoeLayer& layer, ParallelGroups& groups, GradReduction reduction) {
  const trace::Span traced("gradient reduction", "gradients");
  const float dp_scale =
      reduction == GradReduction::mean ? 1.0f / static_cast<float>(groups.dp_size) : 1.0f;
  reduce(*groups.ep, layer.gate_weight_grad(), 1.0f);
  reduce(*groups.dp, layer.gate_weight_grad(), dp_scale);
  // The shared expert is replicated on every rank like the router: summed over the group's
  // tokens, then reduced over the replicas.
  experts::ExpertShard& shared = layer.shared_expert_grads();
  for (std::int64_t e = 0; e < shared.num_experts(); ++e) {
    for (std::string_view param : experts::expert_param_names(shared.shape().activation)) {
      reduce(*groups.ep, shared.param(e, param), 1.0f);
      reduce(*groups.dp, shared.param(e, param), dp_scale);
    }
  }
  experts::ExpertShard& grads = layer.expert_grads();
  for (std::int64_t e = 0; e < grads.num_experts(); ++e) {
    for (std::string_view param : experts::expert_param_names(grads.shape().activation)) {
      reduce(*groups.dp, grads.param(e, param), dp_scale);
    }
  }
}

}  // namespace moe
