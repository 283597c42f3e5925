// Steady-state ffn_forward/ffn_backward allocate nothing, in both precisions and both GEMM row
// policies: nothing from moe-ep's code, and no buffer from oneDNN where its kernels let it
// (experts::gemm_allocation_free). Its own binary: it replaces the process's allocator.
#include <catch2/catch.hpp>

#include <random>
#include <string>
#include <vector>

#include "experts/gemm.hpp"
#include "experts/grouped_ffn.hpp"
#include "tests/experts/allocation_counter.hpp"
#include "tests/experts/row_policy_scope.hpp"

namespace {

using namespace moe::experts;

void fill(std::span<float> v, std::mt19937& rng) {
  std::uniform_real_distribution<float> dist(-0.5f, 0.5f);
  for (float& f : v) f = dist(rng);
}

}  // namespace

TEST_CASE("experts/ffn steady state allocates nothing", "[experts][allocation]") {
  const Activation a = GENERATE(Activation::gelu, Activation::swiglu);
  const Compute compute = GENERATE(Compute::fp32, Compute::bf16);
  const auto policy = GENERATE(detail::RowPolicy::sgemm, detail::RowPolicy::blocked);
  CAPTURE(to_string(a), to_string(compute), policy == detail::RowPolicy::blocked);
  moe::experts::test::RowPolicyScope scope(policy);
  const std::int64_t d = 64, h = 96;
  ExpertShard shard(3, {d, h, a}), grads(3, {d, h, a});
  std::mt19937 rng(3);
  for (std::int64_t e = 0; e < 3; ++e) {
    for (const auto name : expert_param_names(a)) fill(shard.param(e, name), rng);
  }
  // Row counts that are not multiples of the blocked policy's quantum, one expert empty.
  const std::vector<std::int64_t> offsets{0, 45, 45, 112};
  std::vector<float> x(static_cast<std::size_t>(112 * d)), y(x.size()), dy(x.size()), dx(x.size());
  fill(x, rng);
  fill(dy, rng);
  FfnActivations saved;
  const ExpertShard& weights = shard;
  auto step = [&] {
    shard.mark_changed();  // as after an optimizer step: the bf16 copies are remade in place
    ffn_forward(weights, x, offsets, y, saved, compute);
    ffn_backward(weights, x, offsets, saved, dy, dx, grads);
  };
  step();  // warm-up: workspaces, primitives, bf16 weight copies
  const auto counts = moe::test::allocations_during([&] {
    for (int i = 0; i < 3; ++i) step();
  });
  INFO("oneDNN: " << counts.onednn << " allocations in 3 steps, " << counts.onednn_buffers
                  << " of them buffers, the largest " << counts.onednn_largest << " bytes");
  CHECK(counts.moe == 0);
  if (gemm_allocation_free(compute == Compute::bf16)) {
    CHECK(counts.onednn_buffers == 0);
  } else {
    WARN("oneDNN buffer check skipped: on this CPU oneDNN runs these GEMMs as gemm:jit, which "
         "allocates its packing buffers on every call (" << counts.onednn_buffers
         << " buffers in 3 steps, the largest " << counts.onednn_largest << " bytes)");
  }
}

TEST_CASE("the allocation counter sees moe-ep's and oneDNN's allocations", "[allocation]") {
  // Guards the test above against a counter that never counts.
  static std::vector<int>* volatile escape = nullptr;
  const auto mine = moe::test::allocations_during([] { escape = new std::vector<int>(1000); });
  delete escape;
  CHECK(mine.moe >= 2);
  // A GEMM shape never seen before: oneDNN creates a primitive, which allocates.
  std::vector<float> a(77 * 5, 1.0f), b(5 * 3, 1.0f), c(77 * 3);
  const auto theirs = moe::test::allocations_during([&] {
    gemm(Op::none, Op::none, 77, 3, 5, 1.0f, a, 5, b, 3, 0.0f, c, 3);
  });
  CHECK(theirs.onednn >= 1);
}
