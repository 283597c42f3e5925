// moe-bench: times the MoE layer on synthetic data and says where the time goes.
//
//   mpirun -np 2 moe-bench --tokens 2048 --d-model 512 --d-hidden 1024 --experts 8
//
// Every figure is a median over --iters timed calls after --warmup untimed ones; a call's time is
// the slowest rank's. The same expert GEMMs (same shapes, same BLAS) are also timed alone in the
// same run, so the layer's distance from its compute floor is a ratio measured under the same
// machine load.
#include <algorithm>
#include <boost/program_options.hpp>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>

#include "apps/layer_options.hpp"
#include "apps/mpi_program.hpp"
#include "experts/gemm.hpp"
#include "runtime/initialization.hpp"
#include "runtime/moe_layer.hpp"

namespace po = boost::program_options;
using namespace moe;

namespace {

struct Options {
  apps::LayerOptions layer;
  std::int64_t tokens = 2048;
  int iters = 20;
  int warmup = 3;
  std::uint64_t seed = 1;
  bool json = false;
};

std::optional<Options> parse_options(int argc, char** argv, int rank) {
  Options o;
  po::options_description desc(
      "moe-bench: time the MoE layer and its expert GEMMs\n"
      "usage: mpirun -np P moe-bench [options]\noptions");
  desc.add_options()
      ("help", "print this help")
      ("tokens", po::value(&o.tokens)->default_value(o.tokens), "tokens per rank")
      ("iters", po::value(&o.iters)->default_value(o.iters), "timed iterations")
      ("warmup", po::value(&o.warmup)->default_value(o.warmup), "untimed iterations first")
      ("seed", po::value(&o.seed)->default_value(o.seed), "seed of parameters and inputs")
      ("json", po::bool_switch(&o.json), "print one JSON object (rank 0) instead of the table");
  apps::add_layer_options(desc, o.layer);
  po::variables_map vm;
  po::store(po::command_line_parser(argc, argv).options(desc).run(), vm);
  if (vm.count("help")) {
    if (rank == 0) std::cout << desc << "\n";
    return std::nullopt;
  }
  po::notify(vm);
  apps::finish_layer_options(o.layer);
  if (o.tokens < 0) throw apps::UsageError("--tokens must be >= 0");
  if (o.iters < 1) throw apps::UsageError("--iters must be >= 1");
  if (o.warmup < 0) throw apps::UsageError("--warmup must be >= 0");
  return o;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// The forward GEMMs of this rank's experts for the given rows per expert, alone: what the layer
// cannot go below with this BLAS. Returns seconds; `flops` gets 2·M·N·K summed.
double time_expert_gemms(const MoeConfig& c, const experts::ExpertShard& shard,
                         std::span<const std::int64_t> rows, std::vector<float>& a,
                         std::vector<float>& b, double& flops) {
  using experts::Op;
  const std::int64_t d = c.d_model, h = c.d_hidden;
  const auto start = std::chrono::steady_clock::now();
  flops = 0;
  for (std::int64_t e = 0; e < shard.num_experts(); ++e) {
    const std::int64_t m = rows[static_cast<std::size_t>(e)];
    if (m == 0) continue;
    const auto x = std::span<const float>(a).first(static_cast<std::size_t>(m * d));
    const auto hidden = std::span<float>(b).first(static_cast<std::size_t>(m * h));
    experts::gemm(Op::none, Op::transpose, m, h, d, 1.0f, x, d, shard.w1(e), d, 0.0f, hidden, h);
    if (experts::is_gated(c.activation)) {
      experts::gemm(Op::none, Op::transpose, m, h, d, 1.0f, x, d, shard.w3(e), d, 0.0f, hidden, h);
    }
    experts::gemm(Op::none, Op::transpose, m, d, h, 1.0f, hidden, h, shard.w2(e), h, 0.0f,
                  std::span<float>(a).first(static_cast<std::size_t>(m * d)), d);
    flops += 2.0 * static_cast<double>(m * d * h) * (experts::is_gated(c.activation) ? 3 : 2);
  }
  return seconds_since(start);
}

int bench(comm::MpiCommunicator& world, const Options& o) {
  const MoeConfig& c = o.layer.config;
  MoeLayer layer(c, world);
  init_parameters(layer, o.seed);
  const int rank = world.rank();
  const std::int64_t d = c.d_model;
  std::vector<float> x(static_cast<std::size_t>(o.tokens * d)), y(x.size());
  fill_normal(x, o.seed, "input.rank" + std::to_string(rank));

  ForwardContext ctx;
  std::vector<double> forward_s, gemm_s;
  std::vector<std::array<double, kNumPhases>> phases;
  std::vector<float> gemm_a, gemm_b;
  double gemm_flops = 0;
  for (int i = 0; i < o.warmup + o.iters; ++i) {
    world.barrier();
    const auto start = std::chrono::steady_clock::now();
    const ForwardResult& r = layer.forward(x, y, ctx);
    double elapsed[1 + kNumPhases] = {seconds_since(start)};
    std::copy(r.stats.phase_seconds.begin(), r.stats.phase_seconds.end(), elapsed + 1);
    world.allreduce(std::span<double>(elapsed), comm::ReduceOp::max);

    // The same expert shapes, timed alone right after, under the same load.
    std::vector<std::int64_t> rows(r.stats.expert_kept.begin() + layer.first_expert(),
                                   r.stats.expert_kept.begin() + layer.first_expert() + layer.experts_per_rank());
    const std::int64_t most_rows = *std::max_element(rows.begin(), rows.end());
    gemm_a.resize(static_cast<std::size_t>(most_rows * std::max(d, c.d_hidden)));
    gemm_b.resize(static_cast<std::size_t>(most_rows * c.d_hidden));
    world.barrier();
    double gemm_time = time_expert_gemms(c, layer.experts(), rows, gemm_a, gemm_b, gemm_flops);
    world.allreduce(std::span<double>(&gemm_time, 1), comm::ReduceOp::max);
    if (i < o.warmup) continue;
    forward_s.push_back(elapsed[0]);
    gemm_s.push_back(gemm_time);
    std::array<double, kNumPhases> p{};
    std::copy(elapsed + 1, elapsed + 1 + kNumPhases, p.begin());
    phases.push_back(p);
  }

  const ForwardStats& stats = ctx.result().stats;
  if (rank != 0) return 0;
  const double fwd_ms = 1e3 * median(forward_s);
  const double gemm_ms = 1e3 * median(gemm_s);
  const double tokens_per_s = static_cast<double>(stats.total_tokens) / (fwd_ms / 1e3);
  nlohmann::json j;
  j["ranks"] = world.size();
  j["tokens_per_rank"] = o.tokens;
  j["config"] = c.summary();
  j["fwd_ms"] = fwd_ms;
  j["gemm_fwd_ms"] = gemm_ms;
  j["gemm_gflops"] = gemm_flops / (gemm_ms / 1e3) / 1e9;
  j["tokens_per_s"] = tokens_per_s;
  j["dropped_assignments"] = stats.dropped_assignments;
  j["dropped_tokens"] = stats.dropped_tokens;
  j["expert_counts"] = stats.expert_counts;
  j["expert_kept"] = stats.expert_kept;
  for (std::size_t p = 0; p < kNumPhases; ++p) {
    std::vector<double> v;
    for (const auto& it : phases) v.push_back(it[p]);
    j["phase_ms"][std::string(kPhaseNames[p])] = 1e3 * median(v);
  }
  if (o.json) {
    std::cout << j.dump() << std::endl;
    return 0;
  }
  const std::int64_t assignments = stats.total_tokens * c.top_k;
  std::printf("moe-bench: %d ranks x %lld tokens, %s\n", world.size(),
              static_cast<long long>(o.tokens), c.summary().c_str());
  std::printf("routing: %lld assignments, %lld dropped (%.2f%%), %lld tokens lost every choice\n",
              static_cast<long long>(assignments), static_cast<long long>(stats.dropped_assignments),
              assignments ? 100.0 * static_cast<double>(stats.dropped_assignments) / static_cast<double>(assignments) : 0.0,
              static_cast<long long>(stats.dropped_tokens));
  std::printf("%-8s %12s %12s\n", "expert", "assigned", "kept");
  for (std::size_t e = 0; e < stats.expert_counts.size(); ++e) {
    std::printf("%-8zu %12lld %12lld\n", e, static_cast<long long>(stats.expert_counts[e]),
                static_cast<long long>(stats.expert_kept[e]));
  }
  std::printf("\n%-22s %10s   (median of %d, slowest rank)\n", "phase", "ms", o.iters);
  for (std::size_t p = 0; p < kNumPhases; ++p) {
    std::printf("%-22s %10.3f\n", std::string(kPhaseNames[p]).c_str(),
                j["phase_ms"][std::string(kPhaseNames[p])].get<double>());
  }
  std::printf("%-22s %10.3f   %.0f tokens/s\n", "forward", fwd_ms, tokens_per_s);
  std::printf("%-22s %10.3f   %.1f GFLOP/s per rank\n", "expert GEMMs alone", gemm_ms,
              j["gemm_gflops"].get<double>());
  std::printf("%-22s %10.3f\n", "forward / GEMMs", fwd_ms / gemm_ms);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return apps::run_mpi_program("moe-bench", argc, argv, [&](comm::MpiCommunicator& world) {
    const auto options = parse_options(argc, argv, world.rank());
    return options ? bench(world, *options) : 0;
  });
}
