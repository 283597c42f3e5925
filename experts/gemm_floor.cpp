#include "experts/gemm_floor.hpp"

#include <algorithm>

#include "experts/gemm.hpp"

namespace moe::experts {
namespace {

std::size_t size_of(std::int64_t rows, std::int64_t cols) {
  return static_cast<std::size_t>(rows * cols);
}

void prepare(const ExpertShard& shard, std::span<const std::int64_t> rows, GemmFloorWorkspace& ws) {
  const std::int64_t most = rows.empty() ? 0 : *std::max_element(rows.begin(), rows.end());
  const std::int64_t d = shard.shape().d_model, h = shard.shape().d_hidden;
  // Filled once with a harmless value: timing never depends on uninitialised memory.
  auto grow = [](std::vector<float>& v, std::size_t n) {
    if (v.size() < n) v.assign(n, 0.5f);
  };
  grow(ws.rows_d, size_of(most, d));
  grow(ws.out_d, size_of(most, d));
  grow(ws.rows_h, size_of(most, h));
  grow(ws.rows_h2, size_of(most, h));
  if (ws.grads.num_experts() != shard.num_experts()) {
    ws.grads = ExpertShard(shard.num_experts(), shard.shape());
  }
}

}  // namespace

double run_forward_gemms(const ExpertShard& shard, std::span<const std::int64_t> rows_per_expert,
                         GemmFloorWorkspace& ws) {
  prepare(shard, rows_per_expert, ws);
  const std::int64_t d = shard.shape().d_model, h = shard.shape().d_hidden;
  const bool gated = is_gated(shard.shape().activation);
  double flops = 0;
  for (std::int64_t e = 0; e < shard.num_experts(); ++e) {
    const std::int64_t n = rows_per_expert[static_cast<std::size_t>(e)];
    if (n == 0) continue;
    const std::span<const float> x(ws.rows_d.data(), size_of(n, d));
    const std::span<float> hidden(ws.rows_h.data(), size_of(n, h));
    gemm(Op::none, Op::transpose, n, h, d, 1.0f, x, d, shard.w1(e), d, 0.0f, hidden, h);
    if (gated) {
      gemm(Op::none, Op::transpose, n, h, d, 1.0f, x, d, shard.w3(e), d, 0.0f,
           std::span<float>(ws.rows_h2.data(), size_of(n, h)), h);
    }
    gemm(Op::none, Op::transpose, n, d, h, 1.0f, hidden, h, shard.w2(e), h, 0.0f,
         std::span<float>(ws.out_d.data(), size_of(n, d)), d);
    flops += 2.0 * static_cast<double>(n * d * h) * (gated ? 3 : 2);
  }
  return flops;
}

double run_backward_gemms(const ExpertShard& shard, std::span<const std::int64_t> rows_per_expert,
                          GemmFloorWorkspace& ws) {
  prepare(shard, rows_per_expert, ws);
  const std::int64_t d = shard.shape().d_model, h = shard.shape().d_hidden;
  const bool gated = is_gated(shard.shape().activation);
  double flops = 0;
  for (std::int64_t e = 0; e < shard.num_experts(); ++e) {
    const std::int64_t n = rows_per_expert[static_cast<std::size_t>(e)];
    if (n == 0) continue;
    const std::span<const float> x(ws.rows_d.data(), size_of(n, d));
    const std::span<const float> dy(ws.rows_d.data(), size_of(n, d));
    const std::span<float> dx(ws.out_d.data(), size_of(n, d));
    const std::span<float> grad_hidden(ws.rows_h.data(), size_of(n, h));
    const std::span<const float> act(ws.rows_h2.data(), size_of(n, h));
    gemm(Op::none, Op::none, n, h, d, 1.0f, dy, d, shard.w2(e), h, 0.0f, grad_hidden, h);
    gemm(Op::transpose, Op::none, d, h, n, 1.0f, dy, d, act, h, 1.0f, ws.grads.w2(e), h);
    if (gated) {
      gemm(Op::transpose, Op::none, h, d, n, 1.0f, act, h, x, d, 1.0f, ws.grads.w3(e), d);
      gemm(Op::none, Op::none, n, d, h, 1.0f, act, h, shard.w3(e), d, 0.0f, dx, d);
      gemm(Op::none, Op::none, n, d, h, 1.0f, grad_hidden, h, shard.w1(e), d, 1.0f, dx, d);
    } else {
      gemm(Op::none, Op::none, n, d, h, 1.0f, grad_hidden, h, shard.w1(e), d, 0.0f, dx, d);
    }
    gemm(Op::transpose, Op::none, h, d, n, 1.0f, grad_hidden, h, x, d, 1.0f, ws.grads.w1(e), d);
    flops += 2.0 * static_cast<double>(n * d * h) * (gated ? 6 : 4);
  }
  return flops;
}

}  // namespace moe::experts
