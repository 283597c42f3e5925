// The distributed forward pass against the float64 reference of SPEC.md, on whatever rank count
// CTest starts (1, 2 and 4). Every rank computes only its own tokens and hosts only its own
// experts; errors are summed over ranks before they are compared.
//
// Only CHECK is used after the first collective: a REQUIRE failing on one rank would leave the
// others waiting in the next collective.
#include <catch2/catch.hpp>

#include <cmath>

#include "comm/mpi_communicator.hpp"
#include "runtime/error.hpp"
#include "runtime/layer_case.hpp"
#include "runtime/moe_layer.hpp"
#include "tests/support/case_bridge.hpp"

namespace {

using namespace moe;

double group_relative_error(comm::Communicator& comm, const test::ErrorSums& local) {
  double sums[2] = {local.diff_sq, local.ref_sq};
  comm.allreduce(std::span<double>(sums, 2), comm::ReduceOp::sum);
  return test::ErrorSums{sums[0], sums[1]}.relative();
}

struct RankRun {
  std::vector<float> y;
  ForwardResult result;
};

RankRun run_layer(comm::Communicator& comm, const LayerCase& lc) {
  MoeLayer layer(lc.config, comm);
  load_parameters(lc, layer);
  const int r = comm.rank();
  const std::int64_t d = lc.config.d_model;
  const auto input = lc.file.tensors.at("input").f32().subspan(
      static_cast<std::size_t>(lc.first_row(r) * d),
      static_cast<std::size_t>(lc.tokens_per_rank[static_cast<std::size_t>(r)] * d));
  RankRun run;
  run.y.assign(input.size(), std::nanf(""));
  ForwardContext ctx;
  run.result = layer.forward(input, run.y, ctx);
  return run;
}

}  // namespace

TEST_CASE("forward matches the float64 reference on every standard case", "[layer][forward]") {
  auto world = comm::MpiCommunicator::world();
  const int rank = world->rank();
  for (const auto& named : test::standard_cases(world->size())) {
    DYNAMIC_SECTION(named.name) {
      const ref::LayerCase c = ref::make_case(named.spec);
      const ref::LayerResult expected = ref::run_reference(c);
      const LayerCase lc = layer_case_from_file(test::to_case_file(c), named.name);
      const RankRun run = run_layer(*world, lc);

      const std::int64_t d = lc.config.d_model;
      const auto first = expected.output.begin() + lc.first_row(rank) * d;
      const std::vector<double> expected_rows(first, first + static_cast<std::ptrdiff_t>(run.y.size()));
      test::ErrorSums output_error;
      output_error.add(run.y, expected_rows);
      CHECK(group_relative_error(*world, output_error) <= 1e-5);

      test::ErrorSums aux_error, z_error;
      aux_error.add(run.result.aux_loss, expected.aux_loss);
      z_error.add(run.result.z_loss, expected.z_loss);
      CHECK(aux_error.relative() <= 1e-5);
      CHECK(z_error.relative() <= 1e-5);

      const ForwardStats& stats = run.result.stats;
      CHECK(stats.expert_counts == expected.expert_counts);
      CHECK(stats.expert_kept == expected.expert_kept);
      CHECK(stats.dropped_assignments == expected.dropped_assignments);
      CHECK(stats.dropped_tokens == expected.dropped_tokens);
      CHECK(stats.total_tokens == lc.total_tokens());
    }
  }
}

TEST_CASE("the case list exercises dropping, empty ranks and a hot expert", "[layer][cases]") {
  // Guards the test data itself: a generator change must not quietly remove the hard parts.
  auto world = comm::MpiCommunicator::world();
  bool saw_drops = false, saw_empty_rank = false, saw_dropped_token = false;
  for (const auto& named : test::standard_cases(world->size())) {
    const ref::LayerResult r = ref::run_reference(ref::make_case(named.spec));
    saw_drops = saw_drops || r.dropped_assignments > 0;
    saw_dropped_token = saw_dropped_token || r.dropped_tokens > 0;
    for (auto t : named.spec.tokens_per_rank) saw_empty_rank = saw_empty_rank || t == 0;
  }
  CHECK(saw_drops);
  CHECK(saw_dropped_token);
  CHECK(saw_empty_rank);
}

TEST_CASE("forward is bitwise reproducible", "[layer][determinism]") {
  auto world = comm::MpiCommunicator::world();
  for (const auto& named : test::standard_cases(world->size())) {
    if (named.name != "losses" && named.name != "score_policy") continue;
    const LayerCase lc =
        layer_case_from_file(test::to_case_file(ref::make_case(named.spec)), named.name);
    const RankRun a = run_layer(*world, lc);
    const RankRun b = run_layer(*world, lc);
    CHECK(a.y == b.y);  // bitwise: no NaN can appear here, so == is bit equality
    CHECK(a.result.aux_loss == b.result.aux_loss);
    CHECK(a.result.z_loss == b.result.z_loss);
  }
}

TEST_CASE("a context reused across calls of changing sizes gives the same results",
          "[layer][context]") {
  auto world = comm::MpiCommunicator::world();
  const auto cases = test::standard_cases(world->size());
  const LayerCase small = layer_case_from_file(test::to_case_file(ref::make_case(cases[0].spec)), "a");
  ref::CaseSpec bigger_spec = cases[0].spec;
  for (auto& t : bigger_spec.tokens_per_rank) t = t * 3 + 5;
  const LayerCase big = layer_case_from_file(test::to_case_file(ref::make_case(bigger_spec)), "b");

  MoeLayer layer(small.config, *world);
  ForwardContext ctx;
  const int r = world->rank();
  const std::int64_t d = small.config.d_model;
  for (const LayerCase* lc : {&big, &small, &big}) {
    load_parameters(*lc, layer);
    const auto x = lc->file.tensors.at("input").f32().subspan(
        static_cast<std::size_t>(lc->first_row(r) * d),
        static_cast<std::size_t>(lc->tokens_per_rank[static_cast<std::size_t>(r)] * d));
    std::vector<float> y(x.size());
    layer.forward(x, y, ctx);
    const RankRun fresh = run_layer(*world, *lc);
    CHECK(y == fresh.y);
  }
}

TEST_CASE("configuration errors are reported by every rank alike", "[layer][errors]") {
  auto world = comm::MpiCommunicator::world();
  const int size = world->size();
  MoeConfig config;
  config.num_experts = 8;
  config.d_model = 4;
  config.d_hidden = 4;

  SECTION("expert groups that do not divide the experts") {
    config.n_group = 3;
    CHECK_THROWS_WITH(MoeLayer(config, *world),
                      Catch::Contains("n_group=3 does not divide num_experts (8)") &&
                          Catch::Contains(size > 1 ? "ranks 0-" + std::to_string(size - 1) : "rank 0"));
  }
  SECTION("a bias update without the sigmoid gate") {
    config.bias_update_rate = 0.01;
    CHECK_THROWS_WITH(MoeLayer(config, *world), Catch::Contains("bias_update_rate=0.01 needs gate=sigmoid"));
  }
  SECTION("top_k out of range") {
    config.top_k = 9;
    CHECK_THROWS_WITH(MoeLayer(config, *world), Catch::Contains("top_k=9 is outside 1..num_experts"));
  }
  SECTION("one rank configured differently") {
    if (world->rank() == size - 1) config.top_k = 0;
    CHECK_THROWS_WITH(MoeLayer(config, *world),
                      Catch::Contains("top_k=0") && Catch::Contains("rank " + std::to_string(size - 1) + ")"));
  }
}

TEST_CASE("a bad input shape on one rank fails the forward on every rank", "[layer][errors]") {
  auto world = comm::MpiCommunicator::world();
  MoeConfig config;
  config.num_experts = 4 * world->size();
  config.d_model = 4;
  config.d_hidden = 6;
  MoeLayer layer(config, *world);
  const int bad = world->size() - 1;
  std::vector<float> x(world->rank() == bad ? 10 : 12, 0.5f), y(x.size());
  ForwardContext ctx;
  CHECK_THROWS_WITH(layer.forward(x, y, ctx),
                    Catch::Contains("input has 10 elements, not a multiple of d_model=4") &&
                        Catch::Contains("(rank " + std::to_string(bad) + ")"));
  // The layer stays usable: the next call with good shapes succeeds on every rank.
  std::vector<float> good(8, 0.25f), out(8);
  CHECK_NOTHROW(layer.forward(good, out, ctx));
}

TEST_CASE("ranks given different configurations are told which fields differ", "[layer][errors]") {
  auto world = comm::MpiCommunicator::world();
  if (world->size() < 2) return;  // one rank cannot disagree with itself
  const int last = world->size() - 1;
  MoeConfig config;
  config.num_experts = 4 * world->size();
  config.d_model = 4;
  config.d_hidden = 6;
  if (world->rank() == last) {
    config.top_k = 3;             // valid, but not what the others run
    config.activation = experts::Activation::swiglu;
  }
  const std::string others = last == 1 ? "rank 0" : "ranks 0, 1" + std::string(last == 3 ? ", 2" : "");
  CHECK_THROWS_WITH(MoeLayer(config, *world),
                    Catch::Contains("were given different configurations") &&
                        Catch::Contains("top_k=2, activation=gelu (" + others + ")") &&
                        Catch::Contains("top_k=3, activation=swiglu (rank " + std::to_string(last) + ")"));
}

TEST_CASE("check_finite names the rank and row of a NaN in the input or the gradient",
          "[layer][errors]") {
  auto world = comm::MpiCommunicator::world();
  MoeConfig config;
  config.num_experts = 2 * world->size();
  config.d_model = 4;
  config.d_hidden = 6;
  config.check_finite = true;
  MoeLayer layer(config, *world);
  const int bad = world->size() - 1;
  std::vector<float> x(20, 0.5f), y(20), dx(20), dy(20, 1.0f);
  if (world->rank() == bad) x[9] = std::nanf("");
  ForwardContext ctx;
  CHECK_THROWS_WITH(layer.forward(x, y, ctx),
                    Catch::Contains("input row 2 column 1 is NaN (check_finite is on) (rank " +
                                    std::to_string(bad) + ")"));
  x[9] = 0.5f;
  layer.forward(x, y, ctx);
  if (world->rank() == bad) dy[4] = std::numeric_limits<float>::infinity();
  CHECK_THROWS_WITH(layer.backward(x, dy, dx, ctx),
                    Catch::Contains("grad_output row 1 column 0 is infinite"));
}

TEST_CASE("with global capacity the batch's results do not depend on how it is split",
          "[layer][global]") {
  // SPEC.md section 4: the same 96 tokens on 1, 2 or 4 ranks (unevenly, one rank empty) give the
  // counts of one rank holding them all, and outputs within 1e-6 of each other: each run is
  // checked within 5e-7 of the float64 result of the unsplit batch.
  auto world = comm::MpiCommunicator::world();
  const int size = world->size();
  for (const char* policy : {"position", "score"}) {
    DYNAMIC_SECTION(policy) {
      ref::CaseSpec spec;
      spec.config.num_experts = 8;
      spec.config.d_model = 12;
      spec.config.d_hidden = 20;
      spec.config.capacity_scope = "global";
      spec.config.drop_policy = policy;
      spec.config.capacity_factor = 0.75;
      spec.config.min_capacity = 1;
      spec.hot_expert = true;
      spec.tokens_per_rank = {96};
      spec.seed = 4242;
      const ref::LayerCase whole = ref::make_case(spec);
      const ref::LayerResult expected = ref::run_reference(whole);
      REQUIRE(expected.dropped_assignments > 0);
      ref::LayerCase split = whole;
      REQUIRE((size == 1 || size == 2 || size == 4));
      split.tokens_per_rank = size == 1 ? std::vector<std::int64_t>{96}
                              : size == 2 ? std::vector<std::int64_t>{61, 35}
                                          : std::vector<std::int64_t>{40, 0, 33, 23};
      const LayerCase lc = layer_case_from_file(test::to_case_file(split), "split");
      const RankRun run = run_layer(*world, lc);
      CHECK(run.result.stats.expert_counts == expected.expert_counts);
      CHECK(run.result.stats.expert_kept == expected.expert_kept);
      CHECK(run.result.stats.dropped_tokens == expected.dropped_tokens);
      const std::int64_t d = lc.config.d_model;
      const auto first = expected.output.begin() + lc.first_row(world->rank()) * d;
      test::ErrorSums output_error;
      output_error.add(run.y, std::vector<double>(first, first + static_cast<std::ptrdiff_t>(run.y.size())));
      CHECK(group_relative_error(*world, output_error) <= 5e-7);
    }
  }
}
