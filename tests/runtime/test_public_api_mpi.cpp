// The public API as a trainer sees it: this translation unit includes <moe_ep/moe_ep.hpp> and
// nothing else of moe-ep. It first proves at compile time that the header hides the runtime's
// internals, then drives a layer through it: forward, routing, inference, backward, reduction.
#include <moe_ep/moe_ep.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <string>
#include <vector>

// Types of the internals. Declared here, after the umbrella header: if it had pulled in the dispatch
// plan, the exchange thread, the layer's definition or oneDNN, these would be complete.
namespace moe {
struct DispatchPlan;
class Dispatcher;
class DispatchContext;
class ExchangeWorker;
class MoeLayer;
class ForwardContext;
}  // namespace moe
namespace dnnl {
struct engine;
}  // namespace dnnl

namespace {

template <class T>
concept complete = requires { sizeof(T); };

static_assert(!complete<moe::DispatchPlan>, "<moe_ep/moe_ep.hpp> pulls in the dispatch plan");
static_assert(!complete<moe::Dispatcher>, "<moe_ep/moe_ep.hpp> pulls in the Dispatcher's definition");
static_assert(!complete<moe::DispatchContext>, "<moe_ep/moe_ep.hpp> pulls in the dispatch context's definition");
static_assert(!complete<moe::ExchangeWorker>, "<moe_ep/moe_ep.hpp> pulls in the exchange thread");
static_assert(!complete<moe::MoeLayer>, "<moe_ep/moe_ep.hpp> pulls in MoeLayer's definition");
static_assert(!complete<moe::ForwardContext>, "<moe_ep/moe_ep.hpp> pulls in the context's definition");
static_assert(!complete<dnnl::engine>, "<moe_ep/moe_ep.hpp> pulls in oneDNN");

std::vector<float> tokens(std::int64_t rows, std::int64_t d, int rank) {
  std::vector<float> x(static_cast<std::size_t>(rows * d));
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>((i * 37 + static_cast<std::size_t>(rank) * 11) % 17) / 8.0f - 1.0f;
  return x;
}

}  // namespace

TEST_CASE("a trainer drives a layer through <moe_ep/moe_ep.hpp>") {
  auto world = moe_ep::mpi_communicator(MPI_COMM_WORLD);
  auto groups = moe_ep::ParallelGroups::create(*world, world->size());
  moe_ep::Config config;
  config.num_experts = 4;
  config.d_model = 8;
  config.d_hidden = 16;
  config.top_k = 2;
  config.capacity_factor = 0.5;  // some assignments dropped, so kept() says something
  config.min_capacity = 1;
  moe_ep::Layer layer(config, *groups.ep);
  layer.init_parameters(3);

  // Names and owners come from the library: the router first, then this rank's experts by global index.
  const std::vector<moe_ep::LayerTensor> params = layer.parameters();
  REQUIRE(params.front().name == "gate.weight");
  REQUIRE(params.front().placement == moe_ep::Placement::replicated);
  const std::string first = "experts." + std::to_string(layer.first_expert()) + ".w1.weight";
  if (layer.local_experts() > 0) {
    const auto it = std::find_if(params.begin(), params.end(), [&](const auto& p) { return p.name == first; });
    REQUIRE(it != params.end());
    CHECK(it->placement == moe_ep::Placement::expert);
    CHECK(it->shape == std::vector<std::int64_t>{16, 8});
  }

  const std::int64_t rows = 6 + world->rank();
  const std::vector<float> x = tokens(rows, config.d_model, world->rank());
  std::vector<float> y(x.size()), y_inference(x.size()), dx(x.size());
  moe_ep::ForwardContext ctx;
  layer.forward(x, y, ctx);

  // The routing is readable: k choices per token, kept ones counted in the group-wide statistics.
  REQUIRE(ctx.num_tokens() == rows);
  REQUIRE(ctx.selected_experts().size() == static_cast<std::size_t>(rows * config.top_k));
  std::vector<std::int64_t> kept(static_cast<std::size_t>(config.num_experts), 0);
  for (std::int64_t t = 0; t < rows; ++t) {
    for (std::int64_t j = 0; j < config.top_k; ++j) {
      if (ctx.kept(t, j)) ++kept[static_cast<std::size_t>(ctx.selected_experts()[static_cast<std::size_t>(t * config.top_k + j)])];
    }
  }
  groups.ep->allreduce(std::span<std::int64_t>(kept), moe::comm::ReduceOp::sum);
  CHECK(kept == ctx.stats().expert_kept);
  CHECK(ctx.stats().dropped_assignments > 0);

  // Inference computes the same output without a context of the caller's.
  layer.infer(x, y_inference);
  CHECK(y_inference == y);

  layer.zero_grad();
  layer.backward(x, y, dx, ctx);
  layer.reduce_gradients(groups, moe_ep::GradReduction::mean);
  const auto& gate_grad = params.front().grad;  // a view of the layer's own gradient
  CHECK(std::any_of(gate_grad.begin(), gate_grad.end(), [](float g) { return g != 0.0f; }));
  CHECK(std::any_of(dx.begin(), dx.end(), [](float g) { return g != 0.0f; }));
}
