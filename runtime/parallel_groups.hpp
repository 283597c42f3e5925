// Expert parallelism combined with data parallelism: world = ep_size × dp_size.
//
// Expert-parallel groups are blocks of ep_size consecutive ranks (one MoeLayer spans one block);
// expert-data-parallel groups join the ranks holding the same experts across blocks (world ranks
// r, r + ep_size, r + 2·ep_size, ...). The router is replicated over the whole world, each expert
// over its data-parallel group, so their gradients are reduced over those groups.
#pragma once

#include <memory>

#include "comm/communicator.hpp"

namespace moe {

class MoeLayer;

struct ParallelGroups {
  int ep_size = 1;
  int dp_size = 1;
  std::unique_ptr<comm::Communicator> ep;  // this rank's expert-parallel block
  std::unique_ptr<comm::Communicator> dp;  // ranks holding the same experts as this one

  // Collective over `world`. A world size that is not a multiple of ep_size is the same
  // moe::Error on every rank.
  static ParallelGroups create(comm::Communicator& world, int ep_size);
};

enum class GradReduction {
  sum,   // gradients of the sum of the data-parallel replicas' losses
  mean,  // of their mean: what data-parallel training usually wants
};

// Collective over both groups. Completes the gradients backward accumulated in `layer`: the
// router's gradient is summed over the expert-parallel group (each rank held a part of the
// group's tokens), then reduced over the data-parallel replicas, and so is the shared expert's;
// each expert's gradient is reduced over its data-parallel group.
void reduce_gradients(MoeLayer& layer, ParallelGroups& groups, GradReduction reduction);

}  // namespace moe
