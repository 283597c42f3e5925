// The Dispatcher as a level of its own (runtime/moe_ep/dispatcher.hpp): a caller that routes and
// runs its experts itself gets MoeLayer's results, through the pipelined and the split passes, on
// uneven batches (one rank empty), heavy dropping, several chunks and every exchange; and a bad
// routing on one rank is the same error on every rank.
#include <moe_ep/moe_ep.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "comm/mpi_communicator.hpp"
#include "experts/grouped_ffn.hpp"
#include "runtime/initialization.hpp"
#include "runtime/moe_layer.hpp"
#include "runtime/router.hpp"

namespace {

using namespace moe;

struct Variant {
  const char* name;
  std::int64_t chunks;
  ExchangeKind exchange;
  std::int64_t ranks_per_node;
  double capacity_factor;
  DropPolicy policy;
  CapacityScope scope;
  WireFormat wire = WireFormat::fp32;
};

const std::vector<Variant> kVariants = {
    {"one chunk", 1, ExchangeKind::variable, 0, 1.0, DropPolicy::position, CapacityScope::rank},
    {"chunks=3, heavy dropping", 3, ExchangeKind::variable, 0, 0.3, DropPolicy::position, CapacityScope::rank},
    {"chunks=5, score, global capacity", 5, ExchangeKind::variable, 0, 0.5, DropPolicy::score, CapacityScope::global},
    {"padded, chunks=2", 2, ExchangeKind::padded, 0, 0.6, DropPolicy::position, CapacityScope::rank},
    // Every rank a node of its own, so every relay works.
    {"hierarchical", 1, ExchangeKind::hierarchical, 1, 0.5, DropPolicy::score, CapacityScope::rank},
    {"dropless, chunks=4", 4, ExchangeKind::variable, 0, 0.0, DropPolicy::position, CapacityScope::rank},
    {"bf16 wire, chunks=2", 2, ExchangeKind::variable, 0, 0.8, DropPolicy::position, CapacityScope::rank,
     WireFormat::bf16},
};

MoeConfig make_config(const Variant& v, int ranks) {
  MoeConfig config;
  config.num_experts = ranks + 3;  // uneven: some ranks own more experts than others
  config.d_model = 8;
  config.d_hidden = 12;
  config.top_k = 2;
  config.min_capacity = 1;
  config.capacity_factor = v.capacity_factor;
  config.drop_policy = v.policy;
  config.capacity_scope = v.scope;
  config.overlap_chunks = v.chunks;
  config.exchange = v.exchange;
  config.ranks_per_node = v.ranks_per_node;
  config.wire = v.wire;
  return config;
}

// Uneven batches, rank 1 empty.
std::int64_t tokens_of(int rank, int size) {
  constexpr std::int64_t kTokens[4] = {23, 0, 41, 9};
  return size == 1 ? 29 : kTokens[rank % 4];
}

std::vector<float> pattern(std::int64_t n, int rank, std::uint32_t salt) {
  std::vector<float> v(static_cast<std::size_t>(n));
  std::uint32_t s = 2654435761u * static_cast<std::uint32_t>(rank + 1) + salt;
  for (auto& x : v) {
    s = s * 1664525u + 1013904223u;
    x = static_cast<float>(s >> 8) / static_cast<float>(1u << 24) * 2.0f - 1.0f;
  }
  return v;
}

// A distinctive function per global expert g, elementwise: f_g(x) = (1 + g/2)·x + g/4.
double scale_of(std::int64_t g) { return 1.0 + 0.5 * static_cast<double>(g); }
double shift_of(std::int64_t g) { return 0.25 * static_cast<double>(g); }

std::vector<float> params_of(const experts::ExpertShard& shard) {
  std::vector<float> all;
  for (std::int64_t e = 0; e < shard.num_experts(); ++e) {
    for (auto p : {shard.w1(e), shard.b1(e), shard.w2(e), shard.b2(e)}) all.insert(all.end(), p.begin(), p.end());
  }
  return all;
}

}  // namespace

TEST_CASE("a Dispatcher with the layer's experts computes what MoeLayer computes", "[dispatcher]") {
  auto world = comm::MpiCommunicator::world();
  const int rank = world->rank(), size = world->size();
  for (const Variant& v : kVariants) {
    DYNAMIC_SECTION(v.name) {
      const MoeConfig config = make_config(v, size);
      const std::int64_t d = config.d_model, k = config.top_k;
      const std::int64_t tokens = tokens_of(rank, size);
      const std::vector<float> x = pattern(tokens * d, rank, 1), dy = pattern(tokens * d, rank, 2);

      // The layer: routing, experts and exchange together.
      MoeLayer layer(config, *world);
      init_parameters(layer, 7);
      ForwardContext layer_ctx;
      std::vector<float> y_layer(x.size()), dx_layer(x.size());
      layer.forward(x, y_layer, layer_ctx);
      layer.zero_grad();
      layer.backward(x, dy, dx_layer, layer_ctx);

      // The Dispatcher, given the layer's routing and running the same experts itself.
      moe_ep::Dispatcher dispatcher(config, *world);
      REQUIRE(dispatcher.local_experts() == layer.local_experts());
      moe_ep::DispatchContext ctx;
      const moe_ep::Routing routing{tokens, layer_ctx.selected_experts(), layer_ctx.selected_weights()};
      dispatcher.plan(ctx, routing);
      for (std::int64_t t = 0; t < tokens; ++t) {
        for (std::int64_t j = 0; j < k; ++j) REQUIRE(ctx.kept(t, j) == layer_ctx.kept(t, j));
      }
      const auto offsets = ctx.expert_offsets();
      REQUIRE(static_cast<std::int64_t>(offsets.size()) == dispatcher.local_experts() + 1);
      REQUIRE(offsets.back() == ctx.num_expert_rows());

      const experts::ExpertShard& shard = layer.experts();
      experts::ExpertShard grads(shard.num_experts(), shard.shape());
      std::vector<experts::FfnActivations> saved(static_cast<std::size_t>(layer.chunks()));
      std::vector<float> y(x.size()), dx(x.size()), d_weight(static_cast<std::size_t>(tokens * k));
      dispatcher.forward(ctx, x, y, [&](const moe_ep::ExpertBatch& b) {
        experts::ffn_forward(shard, b.input, b.offsets, b.output, saved.at(static_cast<std::size_t>(b.chunk)));
      });
      CHECK(y == y_layer);
      CHECK(ctx.stats().expert_kept == layer_ctx.result().stats.expert_kept);
      CHECK(ctx.stats().dropped_tokens == layer_ctx.result().stats.dropped_tokens);
      CHECK(ctx.stats().bytes_sent == layer_ctx.result().stats.bytes_sent);

      dispatcher.backward(ctx, dy, dx, d_weight, [&](const moe_ep::ExpertBatch& b) {
        experts::ffn_backward(shard, b.input, b.offsets, saved.at(static_cast<std::size_t>(b.chunk)),
                              b.grad_output, b.output, grads);
      });
      // The layer's dx also holds the router's part: add it the way the layer does.
      RouterOutput router;
      route(config, layer.gate_weight(), layer.selection_bias(), x, tokens, router);
      std::vector<float> d_logits(static_cast<std::size_t>(tokens * config.num_experts)), d_gate(layer.gate_weight().size());
      const auto& stats = layer_ctx.result().stats;
      route_backward(config, layer.gate_weight(), x, router, d_weight, {stats.expert_counts, stats.total_tokens, 1.0, 1.0},
                     d_logits, dx, d_gate);
      CHECK(dx == dx_layer);
      CHECK(params_of(grads) == params_of(layer.expert_grads()));

      // The split passes: the experts run once on the whole batch.
      experts::FfnActivations whole;
      std::vector<float> out(static_cast<std::size_t>(ctx.num_expert_rows() * d)), y_split(x.size());
      const auto rows = dispatcher.dispatch(ctx, x);
      experts::ffn_forward(shard, rows, offsets, out, whole);
      dispatcher.combine(ctx, out, y_split);
      // Bitwise when the pipeline also ran one GEMM per expert; otherwise only the blocking differs.
      double diff = 0, norm = 0;
      for (std::size_t i = 0; i < y.size(); ++i) {
        diff += (y_split[i] - y_layer[i]) * (y_split[i] - y_layer[i]);
        norm += y_layer[i] * y_layer[i];
      }
      world->allreduce(std::span<double>(&diff, 1), comm::ReduceOp::sum);
      world->allreduce(std::span<double>(&norm, 1), comm::ReduceOp::sum);
      CHECK(std::sqrt(diff) <= 1e-6 * std::sqrt(norm));
      if (v.chunks == 1) CHECK(y_split == y_layer);
    }
  }
}

TEST_CASE("the split passes run a caller's own experts, forward and backward", "[dispatcher]") {
  auto world = comm::MpiCommunicator::world();
  const int rank = world->rank(), size = world->size();
  for (const Variant& v : kVariants) {
    DYNAMIC_SECTION(v.name) {
      const MoeConfig config = make_config(v, size);
      const std::int64_t d = config.d_model, k = config.top_k, num_experts = config.num_experts;
      const std::int64_t tokens = tokens_of(rank, size);
      const std::vector<float> x = pattern(tokens * d, rank, 3), dy = pattern(tokens * d, rank, 4);
      // A fixed routing map with distinct experts per token, and weights in (0, 1).
      std::vector<std::int32_t> experts(static_cast<std::size_t>(tokens * k));
      std::vector<float> weights = pattern(tokens * k, rank, 5);
      for (std::int64_t t = 0; t < tokens; ++t) {
        for (std::int64_t j = 0; j < k; ++j) {
          const auto a = static_cast<std::size_t>(t * k + j);
          experts[a] = static_cast<std::int32_t>((rank * 5 + t * 3 + j) % num_experts);
          weights[a] = 0.5f + 0.5f * std::abs(weights[a]);
        }
      }
      moe_ep::Dispatcher dispatcher(config, *world);
      moe_ep::DispatchContext ctx;
      dispatcher.plan(ctx, {tokens, experts, weights});
      const auto offsets = ctx.expert_offsets();
      const auto rows = dispatcher.dispatch(ctx, x);
      REQUIRE(static_cast<std::int64_t>(rows.size()) == ctx.num_expert_rows() * d);
      std::vector<float> out(rows.size());
      for (std::int64_t e = 0; e + 1 < static_cast<std::int64_t>(offsets.size()); ++e) {
        const std::int64_t g = dispatcher.first_expert() + e;
        for (auto i = offsets[e] * d; i < offsets[e + 1] * d; ++i) {
          out[static_cast<std::size_t>(i)] = static_cast<float>(scale_of(g) * rows[static_cast<std::size_t>(i)] + shift_of(g));
        }
      }
      std::vector<float> y(x.size()), dx(x.size()), d_weight(weights.size());
      dispatcher.combine(ctx, out, y);
      const auto grads = dispatcher.dispatch_backward(ctx, dy);
      std::vector<float> grad_in(grads.size());
      for (std::int64_t e = 0; e + 1 < static_cast<std::int64_t>(offsets.size()); ++e) {
        const double scale = scale_of(dispatcher.first_expert() + e);
        for (auto i = offsets[e] * d; i < offsets[e + 1] * d; ++i) {
          grad_in[static_cast<std::size_t>(i)] = static_cast<float>(scale * grads[static_cast<std::size_t>(i)]);
        }
      }
      dispatcher.combine_backward(ctx, grad_in, dx, d_weight);

      // The float64 reference of this rank's tokens: all it needs is local. Rows in bf16 on the
      // wire carry 8 bits of mantissa (SPEC.md section 9).
      const double tol = v.wire == WireFormat::bf16 ? 1e-2 : 1e-5;
      std::int64_t kept = 0;
      for (std::int64_t t = 0; t < tokens; ++t) {
        std::vector<double> y_ref(static_cast<std::size_t>(d), 0.0), dx_ref(static_cast<std::size_t>(d), 0.0);
        for (std::int64_t j = 0; j < k; ++j) {
          const auto a = static_cast<std::size_t>(t * k + j);
          double dw = 0, dw_scale = 1;  // the dot product, and the bound's scale (Σ |terms|)
          if (ctx.kept(t, j)) {
            ++kept;
            const std::int64_t g = experts[a];
            for (std::int64_t c = 0; c < d; ++c) {
              const auto i = static_cast<std::size_t>(t * d + c);
              const double f = scale_of(g) * x[i] + shift_of(g);
              y_ref[static_cast<std::size_t>(c)] += weights[a] * f;
              dx_ref[static_cast<std::size_t>(c)] += weights[a] * scale_of(g) * dy[i];
              dw += dy[i] * f;
              dw_scale += std::abs(dy[i] * f);
            }
          }
          CHECK(std::abs(d_weight[a] - dw) <= tol * dw_scale);
        }
        for (std::int64_t c = 0; c < d; ++c) {
          const auto i = static_cast<std::size_t>(t * d + c);
          CHECK(std::abs(y[i] - y_ref[static_cast<std::size_t>(c)]) <= tol * (1 + std::abs(y_ref[static_cast<std::size_t>(c)])));
          CHECK(std::abs(dx[i] - dx_ref[static_cast<std::size_t>(c)]) <= tol * (1 + std::abs(dx_ref[static_cast<std::size_t>(c)])));
        }
      }
      std::int64_t kept_here = kept;
      world->allreduce(std::span<std::int64_t>(&kept_here, 1), comm::ReduceOp::sum);
      std::int64_t kept_stats = 0;
      for (auto n : ctx.stats().expert_kept) kept_stats += n;
      CHECK(kept_stats == kept_here);
      if (v.capacity_factor > 0 && v.capacity_factor < 0.5) CHECK(ctx.stats().dropped_assignments > 0);
    }
  }
}

TEST_CASE("a bad routing on one rank is the same error on every rank", "[dispatcher][errors]") {
  auto world = comm::MpiCommunicator::world();
  const int rank = world->rank(), bad = world->size() - 1;
  for (const Variant& v : kVariants) {
    DYNAMIC_SECTION(v.name) {
      const MoeConfig config = make_config(v, world->size());
      moe_ep::Dispatcher dispatcher(config, *world);
      moe_ep::DispatchContext ctx;
      const std::int64_t tokens = 3;
      std::vector<std::int32_t> experts = {0, 1, 1, 2, 2, 0};
      const std::vector<float> weights(6, 0.5f);
      if (rank == bad) experts[3] = static_cast<std::int32_t>(config.num_experts);
      const std::string expected = "routing: token 1 choice 1 names expert " + std::to_string(config.num_experts) +
                                   ", outside 0.." + std::to_string(config.num_experts - 1) + " (rank " +
                                   std::to_string(bad) + ")";
      CHECK_THROWS_WITH(dispatcher.plan(ctx, {tokens, experts, weights}), Catch::Contains(expected));

      // Still usable; then a wrong length on one rank fails the dispatch everywhere.
      experts[3] = 2;
      dispatcher.plan(ctx, {tokens, experts, weights});
      const std::vector<float> x(static_cast<std::size_t>((rank == bad ? tokens + 1 : tokens) * config.d_model), 1.0f);
      CHECK_THROWS_WITH(dispatcher.dispatch(ctx, x),
                        Catch::Contains("dispatch: x must have 24 elements (3 rows of 8), got 32 (rank " +
                                        std::to_string(bad) + ")"));
    }
  }
}
