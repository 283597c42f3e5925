#include "runtime/parallel_groups.hpp"

#include <string>

#include "runtime/error.hpp"
#include "runtime/layer_tensors.hpp"

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

void reduce_gradients(MoeLayer& layer, ParallelGroups& groups, GradReduction reduction) {
  reduce_gradients(layer_parameters(layer), groups, reduction);
}

}  // namespace moe
