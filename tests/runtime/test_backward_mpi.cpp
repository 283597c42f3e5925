// The distributed backward pass (SPEC.md section 8) against the float64 reference, on 1, 2 and 4
// ranks, and expert parallelism combined with data parallelism. Only CHECK after a collective.
#include <catch2/catch.hpp>

#include <cmath>

#include "comm/mpi_communicator.hpp"
#include "runtime/layer_case.hpp"
#include "runtime/moe_layer.hpp"
#include "runtime/parallel_groups.hpp"
#include "tests/support/case_bridge.hpp"

namespace {

using namespace moe;

std::span<const float> rank_rows(const LayerCase& lc, const char* tensor, int rank) {
  const std::int64_t d = lc.config.d_model;
  return lc.file.tensors.at(tensor).f32().subspan(
      static_cast<std::size_t>(lc.first_row(rank) * d),
      static_cast<std::size_t>(lc.tokens_per_rank[static_cast<std::size_t>(rank)] * d));
}

struct Gradients {
  std::vector<float> dx;
  std::vector<float> gate;   // after reduce_gradients
  std::vector<std::vector<float>> experts;  // [local e * params] flattened per parameter
  std::vector<std::vector<float>> shared;   // the shared expert's, per parameter (after the reduction)
};

// Forward and backward of `lc` on `groups.ep`, gradients reduced over the groups.
Gradients run_backward(ParallelGroups& groups, const LayerCase& lc, GradReduction reduction) {
  MoeLayer layer(lc.config, *groups.ep);
  load_parameters(lc, layer);
  const int r = groups.ep->rank();
  const auto x = rank_rows(lc, "input", r);
  const auto dy = rank_rows(lc, "grad_output", r);
  std::vector<float> y(x.size());
  Gradients g;
  g.dx.assign(x.size(), std::nanf(""));
  ForwardContext ctx;
  layer.forward(x, y, ctx);
  layer.backward(x, dy, g.dx, ctx);
  reduce_gradients(layer, groups, reduction);
  g.gate.assign(layer.gate_weight_grad().begin(), layer.gate_weight_grad().end());
  for (std::int64_t e = 0; e < layer.local_experts(); ++e) {
    for (auto name : experts::expert_param_names(lc.config.activation)) {
      const auto p = layer.expert_grads().param(e, name);
      g.experts.emplace_back(p.begin(), p.end());
    }
  }
  for (std::int64_t e = 0; e < layer.shared_expert_grads().num_experts(); ++e) {
    for (auto name : experts::expert_param_names(lc.config.activation)) {
      const auto p = layer.shared_expert_grads().param(e, name);
      g.shared.emplace_back(p.begin(), p.end());
    }
  }
  return g;
}

// Checks one rank's gradients against expected ones (already combined as the reduction should).
void check_gradients(comm::Communicator& ep, const LayerCase& lc, const Gradients& g,
                     const ref::LayerGrads& expected, std::int64_t expected_dx_first_row) {
  const std::int64_t d = lc.config.d_model;
  test::ErrorSums dx_error;
  const auto first = expected.input.begin() + expected_dx_first_row * d;
  dx_error.add(g.dx, std::vector<double>(first, first + static_cast<std::ptrdiff_t>(g.dx.size())));
  double sums[2] = {dx_error.diff_sq, dx_error.ref_sq};
  ep.allreduce(std::span<double>(sums, 2), comm::ReduceOp::sum);
  CHECK(test::ErrorSums{sums[0], sums[1]}.relative() <= 1e-5);

  test::ErrorSums gate_error;
  gate_error.add(g.gate, expected.params.gate);
  CHECK(gate_error.relative() <= 1e-5);

  const auto names = experts::expert_param_names(lc.config.activation);
  const std::int64_t first_owned = first_expert_of(ep.rank(), lc.config.num_experts, ep.size());
  const std::int64_t local = num_experts_of(ep.rank(), lc.config.num_experts, ep.size());
  REQUIRE(g.experts.size() == static_cast<std::size_t>(local) * names.size());
  std::size_t i = 0;
  for (std::int64_t e = first_owned; e < first_owned + local; ++e) {
    const auto& want = expected.params.experts[static_cast<std::size_t>(e)];
    for (auto name : names) {
      test::ErrorSums err;
      err.add(g.experts[i++], test::expert_param(want, name));
      INFO("expert " << e << " " << name);
      CHECK(err.relative() <= 1e-5);
    }
  }
  REQUIRE(g.shared.size() == (expected.params.shared_expert ? names.size() : 0));
  for (std::size_t n = 0; n < g.shared.size(); ++n) {
    test::ErrorSums err;
    err.add(g.shared[n], test::expert_param(*expected.params.shared_expert, names[n]));
    INFO("shared expert " << names[n]);
    CHECK(err.relative() <= 1e-5);
  }
}

}  // namespace

TEST_CASE("backward matches the float64 reference on every standard case", "[layer][backward]") {
  auto world = comm::MpiCommunicator::world();
  auto groups = ParallelGroups::create(*world, world->size());
  for (const auto& named : test::standard_cases(world->size())) {
    DYNAMIC_SECTION(named.name) {
      const ref::LayerCase c = ref::make_case(named.spec);
      const ref::LayerResult expected = ref::run_reference(c);
      const LayerCase lc = layer_case_from_file(test::to_case_file(c), named.name);
      const Gradients g = run_backward(groups, lc, GradReduction::sum);
      check_gradients(*groups.ep, lc, g, *expected.grads, lc.first_row(world->rank()));
    }
  }
}

TEST_CASE("backward is bitwise reproducible", "[layer][backward][determinism]") {
  auto world = comm::MpiCommunicator::world();
  auto groups = ParallelGroups::create(*world, world->size());
  auto spec = test::standard_cases(world->size())[0].spec;
  spec.config.z_loss_coef = 0.01;
  spec.config.normalize_topk = true;
  const LayerCase lc = layer_case_from_file(test::to_case_file(ref::make_case(spec)), "repeat");
  const Gradients a = run_backward(groups, lc, GradReduction::sum);
  const Gradients b = run_backward(groups, lc, GradReduction::sum);
  CHECK(a.dx == b.dx);
  CHECK(a.gate == b.gate);
  CHECK(a.experts == b.experts);
}

TEST_CASE("backwards of several forwards in flight, in any order", "[layer][backward][context]") {
  auto world = comm::MpiCommunicator::world();
  auto groups = ParallelGroups::create(*world, world->size());
  const auto cases = test::standard_cases(world->size());
  // Two micro-batches with the same parameters: the default case and its losses variant's inputs.
  ref::CaseSpec spec_b = cases[0].spec;
  spec_b.seed += 17;
  const ref::LayerCase ca = ref::make_case(cases[0].spec);
  ref::LayerCase cb = ref::make_case(spec_b);
  cb.params = ca.params;
  const LayerCase la = layer_case_from_file(test::to_case_file(ca), "a");
  const LayerCase lb = layer_case_from_file(test::to_case_file(cb), "b");

  MoeLayer layer(la.config, *world);
  load_parameters(la, layer);
  const int r = world->rank();
  ForwardContext ctx_a, ctx_b;
  std::vector<float> ya(rank_rows(la, "input", r).size()), yb(rank_rows(lb, "input", r).size());
  layer.forward(rank_rows(la, "input", r), ya, ctx_a);
  layer.forward(rank_rows(lb, "input", r), yb, ctx_b);
  std::vector<float> dxa(ya.size()), dxb(yb.size());
  layer.backward(rank_rows(lb, "input", r), rank_rows(lb, "grad_output", r), dxb, ctx_b);
  layer.backward(rank_rows(la, "input", r), rank_rows(la, "grad_output", r), dxa, ctx_a);
  reduce_gradients(layer, groups, GradReduction::sum);

  // Expected: the sum of the two micro-batches' reference gradients.
  ref::LayerGrads want = *ref::run_reference(ca).grads;
  const ref::LayerGrads want_b = *ref::run_reference(cb).grads;
  for (std::size_t i = 0; i < want.params.gate.size(); ++i) want.params.gate[i] += want_b.params.gate[i];
  for (std::size_t e = 0; e < want.params.experts.size(); ++e) {
    for (auto name : experts::expert_param_names(la.config.activation)) {
      auto& w = test::expert_param(want.params.experts[e], name);
      const auto& wb = test::expert_param(want_b.params.experts[e], name);
      for (std::size_t i = 0; i < w.size(); ++i) w[i] += wb[i];
    }
  }
  Gradients g;
  g.dx = dxa;
  g.gate.assign(layer.gate_weight_grad().begin(), layer.gate_weight_grad().end());
  for (std::int64_t e = 0; e < layer.local_experts(); ++e) {
    for (auto name : experts::expert_param_names(la.config.activation)) {
      const auto p = layer.expert_grads().param(e, name);
      g.experts.emplace_back(p.begin(), p.end());
    }
  }
  check_gradients(*world, la, g, want, la.first_row(r));  // dx of batch a alone
  const auto dxb_want = ref::run_reference(cb).grads->input;
  test::ErrorSums dxb_error;
  const auto first = dxb_want.begin() + lb.first_row(r) * lb.config.d_model;
  dxb_error.add(dxb, std::vector<double>(first, first + static_cast<std::ptrdiff_t>(dxb.size())));
  double sums[2] = {dxb_error.diff_sq, dxb_error.ref_sq};
  world->allreduce(std::span<double>(sums, 2), comm::ReduceOp::sum);
  CHECK(test::ErrorSums{sums[0], sums[1]}.relative() <= 1e-5);
}

TEST_CASE("expert parallel x data parallel reduces gradients over the right groups",
          "[layer][backward][groups]") {
  auto world = comm::MpiCommunicator::world();
  if (world->size() != 4) return;  // the layout under test: ep_size 2 x dp_size 2
  auto groups = ParallelGroups::create(*world, 2);
  CHECK(groups.dp_size == 2);
  const int replica = world->rank() / 2;

  // Replica i holds case i; both replicas share the parameters of case 0.
  auto spec = test::standard_cases(2)[0].spec;
  spec.config.z_loss_coef = 0.02;
  spec.config.d_shared_hidden = 8;  // replicated like the router: reduced over both groups
  ref::LayerCase cases[2] = {ref::make_case(spec), {}};
  spec.seed += 99;
  spec.tokens_per_rank = {11, 30};
  cases[1] = ref::make_case(spec);
  cases[1].params = cases[0].params;
  const LayerCase lc = layer_case_from_file(test::to_case_file(cases[replica]), "replica");

  for (GradReduction reduction : {GradReduction::sum, GradReduction::mean}) {
    const Gradients g = run_backward(groups, lc, reduction);
    ref::LayerGrads want = *ref::run_reference(cases[0]).grads;
    const ref::LayerGrads other = *ref::run_reference(cases[1]).grads;
    const double scale = reduction == GradReduction::mean ? 0.5 : 1.0;
    for (std::size_t i = 0; i < want.params.gate.size(); ++i) {
      want.params.gate[i] = (want.params.gate[i] + other.params.gate[i]) * scale;
    }
    for (std::size_t e = 0; e < want.params.experts.size(); ++e) {
      for (auto name : experts::expert_param_names(lc.config.activation)) {
        auto& w = test::expert_param(want.params.experts[e], name);
        const auto& o = test::expert_param(other.params.experts[e], name);
        for (std::size_t i = 0; i < w.size(); ++i) w[i] = (w[i] + o[i]) * scale;
      }
    }
    for (auto name : experts::expert_param_names(lc.config.activation)) {
      auto& w = test::expert_param(*want.params.shared_expert, name);
      const auto& o = test::expert_param(*other.params.shared_expert, name);
      for (std::size_t i = 0; i < w.size(); ++i) w[i] = (w[i] + o[i]) * scale;
    }
    // dx is per replica and never reduced.
    want.input = ref::run_reference(cases[replica]).grads->input;
    check_gradients(*groups.ep, lc, g, want, lc.first_row(groups.ep->rank()));
  }
}

TEST_CASE("a world that does not factor into ep groups is an error on every rank",
          "[groups][errors]") {
  auto world = comm::MpiCommunicator::world();
  if (world->size() < 2) return;
    CHECK_THROWS_WITH(ParallelGroups::create(*world, 3),
                    Catch::Contains("does not split into expert-parallel groups of 3") &&
                        Catch::Contains("ranks 0-" + std::to_string(world->size() - 1)));
}
