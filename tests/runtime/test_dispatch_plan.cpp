#include <catch2/catch.hpp>

#include "runtime/dispatch_plan.hpp"
#include "tests/support/case_bridge.hpp"

using namespace moe;

namespace {

MoeConfig config_for(std::int64_t experts, std::int64_t k, double cf, std::int64_t min_cap) {
  MoeConfig c;
  c.num_experts = experts;
  c.d_model = 4;
  c.d_hidden = 4;
  c.top_k = k;
  c.capacity_factor = cf;
  c.min_capacity = min_cap;
  return c;
}

std::vector<bool> kept_of(const DispatchPlan& plan) {
  std::vector<bool> kept;
  for (std::int64_t a = 0; a < plan.num_tokens * plan.top_k; ++a) kept.push_back(plan.send_row[a] >= 0);
  return kept;
}

// Both steps of a plan with rank-scope capacity, as rank 0 of `ranks` sees it.
void plan_of(const MoeConfig& config, int ranks, std::span<const std::int32_t> expert,
             std::span<const float> weight, std::int64_t tokens, DispatchPlan& plan) {
  rank_assignments(config, expert, weight, tokens, plan);
  build_plan(config, ranks, 0, expert, tokens, 1, -1, {}, plan);
}

}  // namespace

TEST_CASE("capacity follows SPEC.md section 4", "[plan]") {
  CHECK(expert_capacity(config_for(8, 2, 1.25, 4), 10) == 4);     // ceil(3.125) = 4
  CHECK(expert_capacity(config_for(8, 2, 1.25, 4), 100) == 32);   // ceil(31.25)
  CHECK(expert_capacity(config_for(8, 2, 1.25, 40), 100) == 40);  // min_capacity wins
  CHECK(expert_capacity(config_for(8, 2, 1.25, 4), 0) == 0);      // an empty rank keeps nothing
  CHECK(expert_capacity(config_for(8, 2, 0.0, 4), 100) == -1);    // dropless
  CHECK(expert_capacity(config_for(8, 2, -1.0, 4), 100) == -1);
  // In double, 1.1 * 100 / 11 is a hair above 10, so the ceiling is 11, as the reference says.
  const MoeConfig c = config_for(11, 1, 1.1, 0);
  CHECK(expert_capacity(c, 100) == 11);
  ref::LayerConfig rc;
  rc.num_experts = 11;
  rc.top_k = 1;
  rc.capacity_factor = 1.1;
  rc.min_capacity = 0;
  CHECK(ref::capacity(rc, 100).value() == 11);
}

TEST_CASE("position and score policies keep different assignments", "[plan]") {
  // 4 tokens, k = 2, 2 experts, capacity 2 (min_capacity 2, cf tiny).
  const MoeConfig position = config_for(2, 2, 0.01, 2);
  MoeConfig score = position;
  score.drop_policy = DropPolicy::score;
  const std::vector<std::int32_t> expert = {0, 1, 0, 1, 1, 0, 0, 1};
  const std::vector<float> weight = {0.6f, 0.4f, 0.55f, 0.45f, 0.9f, 0.1f, 0.7f, 0.3f};
  DispatchPlan plan;

  plan_of(position, 1, expert, weight, 4, plan);
  // Expert 0: first choices of t0, t1, t3 come before t2's second choice; keeps t0, t1.
  // Expert 1: first choice of t2, then second choices t0, t1, t3; keeps t2 and t0.
  CHECK(kept_of(plan) == std::vector<bool>{true, true, true, false, true, false, false, false});
  CHECK(plan.kept == std::vector<std::int64_t>{2, 2});
  CHECK(plan.dropped_assignments == 4);
  CHECK(plan.dropped_tokens == 1);  // t3 lost both

  plan_of(score, 1, expert, weight, 4, plan);
  // Expert 0 by weight: t3 0.7, t0 0.6, t1 0.55, t2 0.1; expert 1: t2 0.9, t1 0.45, t0 0.4, t3 0.3.
  CHECK(kept_of(plan) == std::vector<bool>{true, false, false, true, true, false, true, false});
  CHECK(plan.dropped_tokens == 0);
}

TEST_CASE("score ties go to the smaller token, then the smaller choice", "[plan]") {
  MoeConfig c = config_for(2, 2, 0.01, 1);
  c.drop_policy = DropPolicy::score;
  // Every weight 0.5; expert 0 receives t0 j1, t1 j0, t2 j1: keeps t0's.
  const std::vector<std::int32_t> expert = {1, 0, 0, 1, 1, 0};
  const std::vector<float> weight(6, 0.5f);
  DispatchPlan plan;
  plan_of(c, 1, expert, weight, 3, plan);
  CHECK(kept_of(plan) == std::vector<bool>{true, true, false, false, false, false});
}

TEST_CASE("send rows are grouped by destination, expert and slot", "[plan]") {
  const MoeConfig c = config_for(4, 2, 0.0, 0);  // dropless
  const std::vector<std::int32_t> expert = {3, 0, 1, 3, 0, 2};
  const std::vector<float> weight(6, 0.5f);
  DispatchPlan plan;
  plan_of(c, 2, expert, weight, 3, plan);
  CHECK(plan.capacity == -1);
  // Slots follow the position order even when nothing drops: expert 0 gets t2 (a first choice)
  // before t0 (a second choice); expert 1: t1; expert 2: t2; expert 3: t0 (j0), then t1 (j1).
  CHECK(std::vector<std::int64_t>(plan.send_token.begin(), plan.send_token.begin() + 6) ==
        std::vector<std::int64_t>{2, 0, 1, 2, 0, 1});
  CHECK(std::vector<std::int64_t>(plan.send_row.begin(), plan.send_row.begin() + 6) ==
        std::vector<std::int64_t>{4, 1, 2, 5, 0, 3});
  CHECK(plan.send_offsets == std::vector<std::int64_t>{0, 3, 6});

  // Source 0 sends 2 rows for local expert 0 and none for 1; source 1 sends 1 and 4.
  set_receive_counts(plan, std::vector<std::int64_t>{2, 0, 1, 4});
  CHECK(plan.recv_offsets == std::vector<std::int64_t>{0, 2, 7});
  CHECK(plan.expert_offsets == std::vector<std::int64_t>{0, 3, 7});
}

TEST_CASE("kept assignments match the reference on every standard case", "[plan]") {
  for (int ranks : {1, 2, 4}) {
    for (const auto& named : test::standard_cases(ranks)) {
      // Global capacity needs the group (runtime/global_capacity.hpp): the layer tests cover it.
      if (named.spec.config.capacity_scope == "global") continue;
      DYNAMIC_SECTION(named.name << " on " << ranks << " ranks") {
        const ref::LayerCase c = ref::make_case(named.spec);
        const ref::LayerResult r = ref::run_reference(c);
        const MoeConfig config = test::to_config(c.config);
        const std::int64_t k = config.top_k;
        std::int64_t first = 0;
        DispatchPlan plan;
        for (std::int64_t tokens : c.tokens_per_rank) {
          const auto a0 = static_cast<std::size_t>(first * k);
          const auto n = static_cast<std::size_t>(tokens * k);
          std::vector<std::int32_t> expert(n);
          std::vector<float> weight(n);
          for (std::size_t a = 0; a < n; ++a) {
            expert[a] = static_cast<std::int32_t>(r.choices[a0 + a]);
            weight[a] = static_cast<float>(r.weights[a0 + a]);
          }
          plan_of(config, ranks, expert, weight, tokens, plan);
          const std::vector<bool> expected(r.kept.begin() + static_cast<std::ptrdiff_t>(a0),
                                           r.kept.begin() + static_cast<std::ptrdiff_t>(a0 + n));
          CHECK(kept_of(plan) == expected);
          first += tokens;
        }
      }
    }
  }
}

TEST_CASE("chunk parts cover every list exactly once, following the experts", "[plan][chunks]") {
  for (std::int64_t local : {1, 2, 3, 4, 8}) {
    for (int chunks : {1, 2, 3, 4, 5, 8, 16}) {
      for (std::int64_t e = 0; e < local; ++e) {
        for (std::int64_t n : {0, 1, 7, 64, 1000}) {
          std::int64_t next = 0;
          int owners = 0;
          for (int c = 0; c < chunks; ++c) {
            const ChunkPart part = chunk_part(n, e, local, c, chunks);
            if (part.rows > 0) {
              CHECK(part.begin == next);  // consecutive chunks take consecutive slots
              next += part.rows;
              ++owners;
            }
          }
          CHECK(next == n);
          // Fewer chunks than experts: whole experts; otherwise every expert owns a chunk.
          if (n > 0 && chunks <= local) CHECK(owners == 1);
        }
      }
      // Every chunk holds at least one expert's rows (no empty chunks when lists are non-empty).
      for (int c = 0; c < chunks; ++c) {
        bool any = false;
        for (std::int64_t e = 0; e < local; ++e) any = any || chunk_part(10, e, local, c, chunks).rows > 0;
        if (chunks <= 10 * local) CHECK(any);
      }
    }
  }
}
