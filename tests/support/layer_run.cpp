#include "tests/support/layer_run.hpp"

#include <cmath>

namespace moe::test {

LayerRun run_layer_case(comm::Communicator& comm, const LayerCase& lc, const MoeConfig& config) {
  MoeLayer layer(config, comm);
  load_parameters(lc, layer);
  const int r = comm.rank();
  const std::int64_t d = config.d_model;
  const auto rows_of = [&](const char* tensor) {
    return lc.file.tensors.at(tensor).f32().subspan(
        static_cast<std::size_t>(lc.first_row(r) * d),
        static_cast<std::size_t>(lc.tokens_per_rank[static_cast<std::size_t>(r)] * d));
  };
  const auto x = rows_of("input");
  LayerRun run;
  run.y.assign(x.size(), std::nanf(""));
  ForwardContext ctx;
  run.chunks = layer.chunks();
  run.result = layer.forward(x, run.y, ctx);
  if (!lc.has_grad_output()) return run;
  run.dx.assign(x.size(), std::nanf(""));
  layer.backward(x, rows_of("grad_output"), run.dx, ctx);
  run.gate_grad.assign(layer.gate_weight_grad().begin(), layer.gate_weight_grad().end());
  comm.allreduce(std::span<float>(run.gate_grad), comm::ReduceOp::sum);
  for (std::int64_t e = 0; e < layer.local_experts(); ++e) {
    for (auto name : experts::expert_param_names(config.activation)) {
      const auto p = layer.expert_grads().param(e, name);
      run.expert_grads.emplace_back(p.begin(), p.end());
    }
  }
  return run;
}

}  // namespace moe::test
