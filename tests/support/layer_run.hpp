// One forward and backward of a layer case on the calling ranks, with everything a test compares.
#pragma once

#include <cstdint>
#include <vector>

#include "comm/communicator.hpp"
#include "runtime/layer_case.hpp"
#include "runtime/moe_layer.hpp"

namespace moe::test {

struct LayerRun {
  std::vector<float> y;          // this rank's output rows
  std::vector<float> dx;         // this rank's input gradient (empty without grad_output)
  std::vector<float> gate_grad;  // summed over the ranks
  std::vector<std::vector<float>> expert_grads;  // this rank's experts, parameter by parameter
  ForwardResult result;
  int chunks = 1;                // chunks the layer used
};

// Runs `lc` with `config` (the case's layer options plus any execution options) on `comm`; the
// backward only when the case has grad_output.
LayerRun run_layer_case(comm::Communicator& comm, const LayerCase& lc, const MoeConfig& config);

}  // namespace moe::test
