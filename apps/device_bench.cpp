#include "apps/device_bench.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "runtime/initialization.hpp"
#include "runtime/moe_layer.hpp"

namespace moe::apps {
namespace {

using Clock = std::chrono::steady_clock;

double median_ms(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return 1e3 * (n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]));
}

// The parameters moe-bench's host run starts from (init_parameters on a host layer).
device::LayerParameters initial_parameters(comm::MpiCommunicator& world, MoeConfig config, std::uint64_t seed) {
  config.overlap_chunks = 1;  // this layer only holds the parameters: no exchange thread
  MoeLayer host(config, world);
  init_parameters(host, seed);
  return {{host.gate_weight().begin(), host.gate_weight().end()},
          {host.selection_bias().begin(), host.selection_bias().end()},
          host.experts(),
          host.shared_expert()};
}

}  // namespace

nlohmann::json measure_device(comm::MpiCommunicator& world, const MoeConfig& config, const DeviceBenchOptions& o) {
  const int rank = world.rank();
  const auto session = open_device_session(o.device.kind, world, config, initial_parameters(world, config, o.seed));
  std::vector<float> x(static_cast<std::size_t>(o.tokens * config.d_model)), dy(x.size());
  fill_normal(x, o.seed, "input.rank" + std::to_string(rank));
  fill_normal(dy, o.seed, "grad_output.rank" + std::to_string(rank));
  session->set_rows(x, dy);
  if (rank == 0) {
    std::fprintf(stderr, "moe-bench: device layer ready on %s, running %d warm-up and %d timed iterations\n",
                 o.device.text.c_str(), o.warmup, o.iters);
    std::fflush(stderr);
  }
  std::vector<double> forward, backward;
  ForwardResult last;
  for (int i = 0; i < o.warmup + o.iters; ++i) {
    world.barrier();
    auto start = Clock::now();
    last = session->forward();
    double t[2] = {std::chrono::duration<double>(Clock::now() - start).count(), 0};
    if (!o.forward_only) {
      start = Clock::now();
      session->backward();
      t[1] = std::chrono::duration<double>(Clock::now() - start).count();
    }
    world.allreduce(std::span<double>(t), comm::ReduceOp::max);
    if (i < o.warmup) continue;
    forward.push_back(t[0]);
    backward.push_back(t[1]);
  }
  if (rank != 0) return {};
  nlohmann::json j;
  j["device"] = o.device.text;
  j["ranks"] = world.size();
  j["tokens_per_rank"] = o.tokens;
  j["config"] = config.summary();
  j["chunks"] = session->chunks();  // with overlap_chunks = auto, what the first forward chose
  j["iters"] = o.iters;
  j["fwd_ms"] = median_ms(forward);
  j["bwd_ms"] = median_ms(backward);
  const double total_ms = j["fwd_ms"].get<double>() + j["bwd_ms"].get<double>();
  j["tokens_per_s"] = total_ms > 0 ? static_cast<double>(last.stats.total_tokens) / (total_ms / 1e3) : 0.0;
  j["total_tokens"] = last.stats.total_tokens;
  j["dropped_assignments"] = last.stats.dropped_assignments;
  j["aux_loss"] = last.aux_loss;
  j["expert_counts"] = last.stats.expert_counts;
  j["expert_kept"] = last.stats.expert_kept;
  return j;
}

void print_device_table(const nlohmann::json& j) {
  std::printf("moe-bench: device layer on %s, %d ranks x %lld tokens, %s, chunks used %d\n",
              j["device"].get<std::string>().c_str(), j["ranks"].get<int>(),
              static_cast<long long>(j["tokens_per_rank"].get<std::int64_t>()), j["config"].get<std::string>().c_str(),
              j["chunks"].get<int>());
  std::printf("routing: %lld tokens, %lld assignments dropped; aux_loss %.6g\n",
              static_cast<long long>(j["total_tokens"].get<std::int64_t>()),
              static_cast<long long>(j["dropped_assignments"].get<std::int64_t>()), j["aux_loss"].get<double>());
  std::printf("medians of %d iterations, slowest rank: forward %.3f ms, backward %.3f ms, %.0f tokens/s\n",
              j["iters"].get<int>(), j["fwd_ms"].get<double>(), j["bwd_ms"].get<double>(),
              j["tokens_per_s"].get<double>());
}

}  // namespace moe::apps
