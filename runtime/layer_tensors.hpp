// The tensors of one MoeLayer as a trainer or a checkpoint sees them: SPEC.md section 2 names,
// shapes, this rank's memory, and where each lives (replicated over the world, or owned by this
// rank's expert-parallel position). The one place that knows which rank owns which tensor.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "runtime/parallel_groups.hpp"

namespace moe {

class MoeLayer;

enum class Placement {
  replicated,  // the router and the shared expert: every rank holds it; gradients are summed over
               // the expert-parallel group, then reduced over the data-parallel replicas
  expert,      // one of this rank's experts: reduced over its data-parallel group only
};

struct LayerTensor {
  std::string name;                  // "gate.weight", "experts.3.w1.weight" (global index), ...
  std::vector<std::int64_t> shape;
  std::span<float> value;            // the layer's own memory
  std::span<float> grad;             // empty for a buffer
  Placement placement = Placement::replicated;
};

// The trainable tensors of `layer` on this rank, in a fixed order: gate.weight, the shared
// expert's, then this rank's experts by global index (none when the group has more ranks than
// experts). Spans point into the layer.
std::vector<LayerTensor> layer_parameters(MoeLayer& layer);

// The tensors no gradient trains (replicated): gate.e_score_correction_bias with the sigmoid gate.
std::vector<LayerTensor> layer_buffers(MoeLayer& layer);

// Collective over both groups. Completes gradients that backward accumulated, each by its
// placement; `tensors` may carry gradients held elsewhere (a trainer's own copies) as long as
// every rank passes the same names in the same order.
void reduce_gradients(std::span<const LayerTensor> tensors, ParallelGroups& groups, GradReduction reduction);

}  // namespace moe
