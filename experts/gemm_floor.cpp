#include "experts/gemm_floor.hpp"

#include <algorithm>

#include "experts/ffn_work.hpp"

namespace moe::experts {
namespace {

constexpr FfnWork kGemmsOnly{.elementwise = false, .fuse_bias = true};

// Lays out the rows and grows the operands; returns the total rows.
std::int64_t prepare(const ExpertShard& shard, std::span<const std::int64_t> rows,
                     GemmFloorWorkspace& ws, Compute compute) {
  ws.offsets.assign(1, 0);
  for (const std::int64_t r : rows) ws.offsets.push_back(ws.offsets.back() + r);
  const std::int64_t total = ws.offsets.back();
  const auto nd = static_cast<std::size_t>(total * shard.shape().d_model);
  // Filled once with a harmless value: timing never depends on uninitialised memory.
  for (auto* v : {&ws.rows_d, &ws.out_d}) {
    if (v->size() < nd) v->assign(nd, 0.5f);
  }
  reserve(ws.saved, total, shard.shape(), compute);
  ws.saved.compute = compute;
  if (ws.grads.num_experts() != shard.num_experts()) {
    ws.grads = ExpertShard(shard.num_experts(), shard.shape());
  }
  return total;
}

double gemm_flops(const ExpertShard& shard, std::int64_t rows, int gemms_per_weight_layer) {
  const bool gated = is_gated(shard.shape().activation);
  return 2.0 * static_cast<double>(rows) * static_cast<double>(shard.shape().d_model) *
         static_cast<double>(shard.shape().d_hidden) * (gated ? 3 : 2) * gemms_per_weight_layer;
}

}  // namespace

double run_forward_gemms(const ExpertShard& shard, std::span<const std::int64_t> rows_per_expert,
                         GemmFloorWorkspace& ws, Compute compute) {
  const std::int64_t total = prepare(shard, rows_per_expert, ws, compute);
  const auto nd = static_cast<std::size_t>(total * shard.shape().d_model);
  ffn_forward(shard, std::span<const float>(ws.rows_d).first(nd), ws.offsets,
              std::span(ws.out_d).first(nd), ws.saved, compute, kGemmsOnly);
  return gemm_flops(shard, total, 1);
}

double run_backward_gemms(const ExpertShard& shard, std::span<const std::int64_t> rows_per_expert,
                          GemmFloorWorkspace& ws, Compute compute) {
  const std::int64_t total = prepare(shard, rows_per_expert, ws, compute);
  const auto nd = static_cast<std::size_t>(total * shard.shape().d_model);
  const std::span<const float> x = std::span<const float>(ws.rows_d).first(nd);
  ffn_backward(shard, x, ws.offsets, ws.saved, x, std::span(ws.out_d).first(nd), ws.grads,
               kGemmsOnly);
  return gemm_flops(shard, total, 2);
}

}  // namespace moe::experts
