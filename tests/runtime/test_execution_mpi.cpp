// Every execution option computes the same layer (SPEC.md section 9): overlap chunks (a number or
// auto), the padded and the hierarchical exchange and the bf16 wire format, forward and backward,
// on 1, 2 and 4 ranks, against the float64 reference and against the plain run (one chunk,
// variable, fp32); and bf16 compute follows weight changes (its accuracy: the replay suite's
// compute_bf16 runs).
#include <catch2/catch.hpp>

#include "comm/mpi_communicator.hpp"
#include "runtime/initialization.hpp"
#include "tests/support/case_bridge.hpp"
#include "tests/support/layer_run.hpp"

namespace {

using namespace moe;

struct Variant {
  std::string name;
  std::int64_t chunks;
  ExchangeKind exchange;
  WireFormat wire;
  std::int64_t ranks_per_node = 0;
};

const std::vector<Variant> kExactVariants = {
    {"chunks=3", 3, ExchangeKind::variable, WireFormat::fp32},
    {"chunks=auto", 0, ExchangeKind::variable, WireFormat::fp32},
    {"padded", 1, ExchangeKind::padded, WireFormat::fp32},
    {"padded,chunks=2", 2, ExchangeKind::padded, WireFormat::fp32},
    // Every rank a node of its own, so every relay works (the replay suite runs 2 per node).
    {"hierarchical,1 per node", 1, ExchangeKind::hierarchical, WireFormat::fp32, 1},
};
const std::vector<Variant> kBf16Variants = {
    {"bf16", 1, ExchangeKind::variable, WireFormat::bf16},
    {"bf16,chunks=4,padded", 4, ExchangeKind::padded, WireFormat::bf16},
};

// ‖a − b‖ / ‖b‖ over the whole group.
double group_error(comm::Communicator& comm, std::span<const float> a, std::span<const float> b) {
  test::ErrorSums e;
  e.add(a, std::vector<double>(b.begin(), b.end()));
  double sums[2] = {e.diff_sq, e.ref_sq};
  comm.allreduce(std::span<double>(sums, 2), comm::ReduceOp::sum);
  return test::ErrorSums{sums[0], sums[1]}.relative();
}

double group_error(comm::Communicator& comm, std::span<const float> a, const std::vector<double>& ref,
                   std::int64_t first) {
  const auto begin = ref.begin() + first;
  test::ErrorSums e;
  e.add(a, std::vector<double>(begin, begin + static_cast<std::ptrdiff_t>(a.size())));
  double sums[2] = {e.diff_sq, e.ref_sq};
  comm.allreduce(std::span<double>(sums, 2), comm::ReduceOp::sum);
  return test::ErrorSums{sums[0], sums[1]}.relative();
}

void check_variants(comm::Communicator& world, const std::vector<test::NamedCase>& cases,
                    const std::vector<Variant>& variants) {
  const int rank = world.rank();
  for (const auto& named : cases) {
    // One section per case, its variants inside it: Catch2 reruns the test case once per leaf
    // section, and everything outside the leaves with it (the reference of every case, per
    // variant, took minutes under ASan).
    DYNAMIC_SECTION(named.name) {
      const ref::LayerCase c = ref::make_case(named.spec);
      const ref::LayerResult expected = ref::run_reference(c);
      const LayerCase lc = layer_case_from_file(test::to_case_file(c), named.name);
      const test::LayerRun plain = test::run_layer_case(world, lc, lc.config);
      const std::int64_t first = lc.first_row(rank) * lc.config.d_model;

      for (const Variant& v : variants) {
        if (v.exchange == ExchangeKind::padded && lc.config.dropless()) continue;
        INFO(named.name << " " << v.name);
        MoeConfig config = lc.config;
        config.overlap_chunks = v.chunks;
        config.exchange = v.exchange;
        config.wire = v.wire;
        config.ranks_per_node = v.ranks_per_node;
        const test::LayerRun run = test::run_layer_case(world, lc, config);
        const bool exact_wire = v.wire == WireFormat::fp32;
        const double to_reference = exact_wire ? 1e-5 : 1e-2;
        // fp32 variants differ from the plain run only in GEMM blocking (rows per call), and the
        // hierarchical exchange in the order it adds a token's weighted outputs.
        const double to_plain = exact_wire ? 1e-6 : 1e-2;
        const bool relu_bf16 = !exact_wire && lc.config.activation == experts::Activation::relu;
        const double grad_to_reference = relu_bf16 ? test::kReluBf16GradientBound : to_reference;
        const double grad_to_plain = relu_bf16 ? test::kReluBf16GradientBound : to_plain;

        CHECK(run.result.stats.expert_counts == expected.expert_counts);
        CHECK(run.result.stats.expert_kept == expected.expert_kept);
        CHECK(run.result.stats.dropped_tokens == expected.dropped_tokens);
        CHECK(run.result.aux_loss == plain.result.aux_loss);  // the router does not change
        CHECK(run.result.z_loss == plain.result.z_loss);
        CHECK(group_error(world, run.y, expected.output, first) <= to_reference);
        CHECK(group_error(world, run.y, plain.y) <= to_plain);
        CHECK(group_error(world, run.dx, expected.grads->input, first) <= grad_to_reference);
        CHECK(group_error(world, run.dx, plain.dx) <= grad_to_plain);
        test::ErrorSums gate;
        gate.add(run.gate_grad, expected.grads->params.gate);
        CHECK(gate.relative() <= grad_to_reference);
        for (std::size_t i = 0; i < run.expert_grads.size(); ++i) {
          test::ErrorSums e;
          e.add(run.expert_grads[i], std::vector<double>(plain.expert_grads[i].begin(),
                                                         plain.expert_grads[i].end()));
          CHECK(e.relative() <= grad_to_plain);
        }
        if (v.chunks > 1) CHECK(run.chunks == v.chunks);
      }
    }
  }
}

}  // namespace

TEST_CASE("chunks, auto chunks, the padded and the hierarchical exchange compute the same layer",
          "[layer][execution]") {
  auto world = comm::MpiCommunicator::world();
  check_variants(*world, test::standard_cases(world->size()), kExactVariants);
}

TEST_CASE("the bf16 wire format stays within 1e-2", "[layer][execution][bf16]") {
  auto world = comm::MpiCommunicator::world();
  check_variants(*world, test::bf16_cases(world->size()), kBf16Variants);
}

TEST_CASE("a weight change after a bf16 forward reaches the next one", "[layer][execution][bf16]") {
  // Weights written through spans kept from before a forward (as an optimizer does) and announced
  // with parameters_changed(): the next forward must use them, not the bf16 copies of the old ones.
  auto world = comm::MpiCommunicator::world();
  MoeConfig config;
  config.num_experts = 2 * world->size();
  config.d_model = 32;
  config.d_hidden = 48;
  config.d_shared_hidden = 16;
  config.compute = experts::Compute::bf16;
  std::vector<float> x(static_cast<std::size_t>(40 * config.d_model)), y(x.size()), expected(x.size());
  fill_normal(x, 9, "input.rank" + std::to_string(world->rank()));
  const auto change = [](std::span<float> w) {
    for (float& v : w) v = 1.5f * v + 0.01f;
  };

  MoeLayer fresh(config, *world);
  init_parameters(fresh, 4);
  for (std::int64_t e = 0; e < fresh.local_experts(); ++e) change(fresh.experts().w2(e));
  change(fresh.shared_expert().w1(0));
  ForwardContext ctx;
  fresh.forward(x, expected, ctx);

  MoeLayer layer(config, *world);
  init_parameters(layer, 4);
  std::vector<std::span<float>> kept;
  for (std::int64_t e = 0; e < layer.local_experts(); ++e) kept.push_back(layer.experts().w2(e));
  kept.push_back(layer.shared_expert().w1(0));
  layer.forward(x, y, ctx);  // makes the bf16 copies of the initial weights
  const std::vector<float> before = y;
  for (std::span<float> w : kept) change(w);
  layer.parameters_changed();
  layer.forward(x, y, ctx);
  CHECK(y != before);
  CHECK(y == expected);
}

TEST_CASE("a chunked pipeline is bitwise reproducible", "[layer][execution][determinism]") {
  auto world = comm::MpiCommunicator::world();
  const auto named = test::standard_cases(world->size())[0];
  const LayerCase lc = layer_case_from_file(test::to_case_file(ref::make_case(named.spec)), "case");
  MoeConfig config = lc.config;
  config.overlap_chunks = 3;
  config.wire = WireFormat::bf16;
  const test::LayerRun a = test::run_layer_case(*world, lc, config);
  const test::LayerRun b = test::run_layer_case(*world, lc, config);
  CHECK(a.y == b.y);
  CHECK(a.dx == b.dx);
  CHECK(a.gate_grad == b.gate_grad);
  CHECK(a.expert_grads == b.expert_grads);
}

TEST_CASE("execution options are validated", "[config][execution]") {
  MoeConfig c;
  c.num_experts = 4;
  c.d_model = 4;
  c.d_hidden = 4;
  c.overlap_chunks = 65;
  CHECK_THROWS_WITH(c.validate(), "overlap_chunks=65 is outside 1..64 (or auto)");
  c.overlap_chunks = 1;
  c.exchange = ExchangeKind::padded;
  c.capacity_factor = 0;
  CHECK_THROWS_WITH(c.validate(), Catch::StartsWith("exchange=padded needs a capacity"));
  c.capacity_factor = 1;
  c.exchange = ExchangeKind::hierarchical;
  c.overlap_chunks = 0;
  CHECK_THROWS_WITH(c.validate(), "exchange=hierarchical runs the whole pass as one chunk: set overlap_chunks=1 (it is auto)");
  c.overlap_chunks = 1;
  c.wire = WireFormat::bf16;
  CHECK_THROWS_WITH(c.validate(), Catch::StartsWith("exchange=hierarchical sends fp32 rows"));
  c.wire = WireFormat::fp32;
  CHECK_NOTHROW(c.validate());
}
