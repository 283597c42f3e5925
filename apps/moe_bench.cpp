// moe-bench: times the MoE layer on synthetic data and says where the time goes.
//
//   mpirun -np 2 moe-bench --tokens 2048 --d-model 512 --d-hidden 1024 --experts 8
//
// Every figure is a median over --iters timed calls after --warmup untimed ones; a call's time is
// the slowest rank's. Two floors are measured in the same run, under the same machine load:
//   - the expert GEMMs alone (same shapes, same BLAS as the layer's forward and backward), and
//   - a plain MPI_Alltoallv moving the same per-peer bytes as the layer's two exchanges.
// The layer's distance from them is reported as ratios. With --compare-compute the whole
// measurement runs a second time with the other compute precision (fp32 <-> bf16), in the same
// process, and both are printed side by side. --device cuda (or host-launcher) times the device
// layer instead (apps/device_bench.hpp), without the floors.
#include <algorithm>
#include <boost/program_options.hpp>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <map>
#include <numeric>
#include <optional>

#include "apps/device_bench.hpp"
#include "apps/execution_options.hpp"
#include "apps/forced_routing.hpp"
#include "apps/layer_options.hpp"
#include "apps/link_options.hpp"
#include "apps/node_spread.hpp"
#include "apps/run_queue.hpp"
#include "apps/mpi_program.hpp"
#include "apps/trace_options.hpp"
#include "experts/gemm_floor.hpp"
#include "runtime/initialization.hpp"
#include "runtime/moe_layer.hpp"
#include "runtime/trace.hpp"
#include "runtime/wire_format.hpp"

namespace po = boost::program_options;
using namespace moe;

namespace {

struct Options {
  apps::LayerOptions layer;
  apps::ExecutionOptions execution;
  apps::LinkOptions link;
  apps::TraceOptions trace;
  std::int64_t tokens = 2048;
  int iters = 20;
  int warmup = 3;
  std::uint64_t seed = 1;
  bool forward_only = false;
  bool json = false;
  bool compare_compute = false;
  std::string routing = "learned";
  apps::RoutingSpec routing_spec;
  apps::DeviceOption device;
};

std::optional<Options> parse_options(int argc, char** argv, int rank) {
  Options o;
  po::options_description desc(
      "moe-bench: time the MoE layer against its GEMM and all-to-all floors\n"
      "usage: mpirun -np P moe-bench [options]\noptions");
  desc.add_options()
      ("help", "print this help")
      ("tokens", po::value(&o.tokens)->default_value(o.tokens), "tokens per rank")
      ("iters", po::value(&o.iters)->default_value(o.iters), "timed iterations")
      ("warmup", po::value(&o.warmup)->default_value(o.warmup), "untimed iterations first")
      ("seed", po::value(&o.seed)->default_value(o.seed), "seed of parameters and inputs")
      ("forward-only", po::bool_switch(&o.forward_only), "time the forward pass only")
      ("routing", po::value(&o.routing)->default_value(o.routing),
       "learned (the router) | balanced | zipf:S | hot:E,P (expert E gets share P): forced routing")
      ("json", po::bool_switch(&o.json), "print one JSON object (rank 0, one line) instead of the table")
      ("compare-compute", po::bool_switch(&o.compare_compute),
       "measure again with the other --compute precision (fp32 <-> bf16; an unset --wire follows "
       "it) and print both");
  apps::add_layer_options(desc, o.layer);
  apps::add_execution_options(desc, o.execution);
  apps::add_link_options(desc, o.link);
  apps::add_trace_options(desc, o.trace);
  apps::add_device_option(desc, o.device);
  po::variables_map vm;
  po::store(po::command_line_parser(argc, argv).options(desc).run(), vm);
  if (vm.count("help")) {
    if (rank == 0) std::cout << desc << "\n";
    return std::nullopt;
  }
  po::notify(vm);
  apps::finish_layer_options(o.layer);
  apps::finish_execution_options(o.execution, o.layer.config);
  apps::finish_link_options(o.link);
  apps::finish_trace_options(o.trace);
  if (o.tokens < 0) throw apps::UsageError("--tokens must be >= 0");
  if (o.iters < 1) throw apps::UsageError("--iters must be >= 1");
  if (o.warmup < 0) throw apps::UsageError("--warmup must be >= 0");
  apps::finish_device_option(o.device);
  if (o.device.kind != apps::DeviceKind::host &&
      (o.compare_compute || o.link.enabled() || !o.trace.path.empty() || o.routing != "learned")) {
    throw apps::UsageError("--device " + o.device.text + " times the device layer alone: it takes none of "
                           "--compare-compute, --link-*, --trace, --routing");
  }
  o.routing_spec = apps::parse_routing(o.routing, o.layer.config.num_experts, o.layer.config.top_k,
                                       o.layer.config.d_model);
  return o;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

using Clock = std::chrono::steady_clock;
// Seconds since `start`; the interval is also an event of the trace, when one is recorded.
double seconds_since(Clock::time_point start, const char* trace_name) {
  const auto now = Clock::now();
  trace::record(trace_name, "bench", start, now);
  return std::chrono::duration<double>(now - start).count();
}

// Medians (ms) of one series per named quantity.
class Series {
 public:
  void add(const std::string& name, double seconds) { values_[name].push_back(seconds); }
  double median_ms(const std::string& name) const {
    auto it = values_.find(name);
    return it == values_.end() ? 0.0 : 1e3 * median(it->second);
  }

 private:
  std::map<std::string, std::vector<double>> values_;
};

// The same per-peer bytes as one forward's dispatch and return, through plain MPI_Alltoallv, or
// through the simulated link when the run has one (then the link's time is part of the floor).
class RawAlltoallv {
 public:
  RawAlltoallv(comm::MpiCommunicator& mpi, comm::Communicator* link, const ForwardStats& stats,
               std::int64_t row_bytes)
      : mpi_(mpi), link_(link) {
    const int p = mpi.size();
    for (int r = 0; r < p; ++r) {
      out_.push_back(static_cast<int>(stats.rows_to_peer[r] * row_bytes));
      in_.push_back(static_cast<int>(stats.rows_from_peer[r] * row_bytes));
    }
    out_displs_ = displacements(out_);
    in_displs_ = displacements(in_);
    send_.assign(static_cast<std::size_t>(out_displs_.back() + out_.back()), std::byte{1});
    recv_.assign(static_cast<std::size_t>(in_displs_.back() + in_.back()), std::byte{0});
    out_bytes_.assign(out_.begin(), out_.end());
    in_bytes_.assign(in_.begin(), in_.end());
  }
  void run() {
    if (link_ != nullptr) {
      link_->alltoallv(send_.data(), out_bytes_, recv_.data(), in_bytes_);
      link_->alltoallv(recv_.data(), in_bytes_, send_.data(), out_bytes_);
      return;
    }
    MPI_Alltoallv(send_.data(), out_.data(), out_displs_.data(), MPI_BYTE, recv_.data(), in_.data(),
                  in_displs_.data(), MPI_BYTE, mpi_.native());
    MPI_Alltoallv(recv_.data(), in_.data(), in_displs_.data(), MPI_BYTE, send_.data(), out_.data(),
                  out_displs_.data(), MPI_BYTE, mpi_.native());
  }

 private:
  static std::vector<int> displacements(const std::vector<int>& counts) {
    std::vector<int> d(counts.size(), 0);
    for (std::size_t i = 1; i < counts.size(); ++i) d[i] = d[i - 1] + counts[i - 1];
    return d;
  }
  comm::MpiCommunicator& mpi_;
  comm::Communicator* link_;
  std::vector<int> out_, in_, out_displs_, in_displs_;
  std::vector<std::size_t> out_bytes_, in_bytes_;
  std::vector<std::byte> send_, recv_;
};

// How unevenly the work fell: assignments per expert (before dropping), kept rows per rank, and
// the bytes the busiest rank's link carries in one forward's two exchanges (max of sent and
// received to and from other ranks, each way, at the wire format's row size).
struct LoadFigures {
  double expert_max_over_mean = 0;
  double rank_max_over_mean = 0;
  double link_bytes_max = 0;
};

LoadFigures load_figures(comm::Communicator& world, const MoeLayer& layer, const ForwardStats& stats) {
  LoadFigures f;
  f.expert_max_over_mean = apps::max_over_mean(stats.expert_counts);
  std::vector<std::int64_t> rank_rows(static_cast<std::size_t>(layer.ep_size()), 0);
  for (std::size_t e = 0; e < stats.expert_kept.size(); ++e) {
    const auto owner = owner_of_expert(static_cast<std::int64_t>(e), layer.config().num_experts, layer.ep_size());
    rank_rows[static_cast<std::size_t>(owner)] += stats.expert_kept[e];
  }
  f.rank_max_over_mean = apps::max_over_mean(rank_rows);
  std::int64_t sent = 0, received = 0;
  for (int p = 0; p < layer.ep_size(); ++p) {
    if (p == layer.ep_rank()) continue;
    sent += stats.rows_to_peer[static_cast<std::size_t>(p)];
    received += stats.rows_from_peer[static_cast<std::size_t>(p)];
  }
  const double row_bytes = static_cast<double>(layer.config().d_model) *
                           static_cast<double>(wire_value_bytes(layer.config().wire_format()));
  double link_bytes[1] = {2.0 * static_cast<double>(std::max(sent, received)) * row_bytes};
  world.allreduce(std::span<double>(link_bytes), comm::ReduceOp::max);
  f.link_bytes_max = link_bytes[0];
  return f;
}

// Every figure of one configuration, as the JSON object moe-bench prints (valid on rank 0).
nlohmann::json measure(comm::MpiCommunicator& world, const Options& o, const MoeConfig& c) {
  std::unique_ptr<comm::Communicator> link_storage;
  comm::Communicator& ep = apps::with_link(o.link, world, link_storage, static_cast<int>(c.ranks_per_node));
  MoeLayer layer(c, ep);
  init_parameters(layer, o.seed);
  const int rank = world.rank();
  const std::int64_t d = c.d_model;
  std::vector<float> x(static_cast<std::size_t>(o.tokens * d)), y(x.size()), dy(x.size()), dx(x.size());
  fill_normal(x, o.seed, "input.rank" + std::to_string(rank));
  fill_normal(dy, o.seed, "grad_output.rank" + std::to_string(rank));
  apps::apply_forced_routing(o.routing_spec, layer, x, o.tokens, o.seed, rank);

  if (rank == 0) {
    // On stderr, so --json output stays one line; also the sign (for tests) that the run is under way.
    std::fprintf(stderr, "moe-bench: layer ready, running %d warm-up and %d timed iterations\n",
                 o.warmup, o.iters);
    std::fflush(stderr);
  }
  ForwardContext ctx;
  Series series;
  experts::GemmFloorWorkspace gemm_ws;
  double gemm_fwd_flops = 0, gemm_bwd_flops = 0;
  std::optional<RawAlltoallv> raw;
  // What crosses the network: rows in the wire format (the floor moves the same bytes).
  const std::int64_t row_bytes = d * static_cast<std::int64_t>(wire_value_bytes(c.wire_format()));
  for (int i = 0; i < o.warmup + o.iters; ++i) {
    // Layer: forward then backward, each timed on every rank; the slowest rank counts.
    // queued: this thread's run-queue waits (apps/run_queue.hpp) in the forward, the backward
    // and the two GEMM floors, read outside the timed spans.
    enum Queued { fwd_queued, bwd_queued, gemm_fwd_queued, gemm_bwd_queued, num_queued };
    double queued[num_queued] = {};
    world.barrier();
    queued[fwd_queued] = -apps::run_queue_seconds();
    auto start = Clock::now();
    const ForwardResult& r = layer.forward(x, y, ctx);
    enum Extra { count_exchange, fill, bwd_fill, fwd_outside, bwd_outside, num_extra };
    double t[2 + 2 * kNumPhases + num_extra] = {seconds_since(start, "forward"), 0};
    queued[fwd_queued] += apps::run_queue_seconds();
    if (!o.forward_only) {
      queued[bwd_queued] = -apps::run_queue_seconds();
      start = Clock::now();
      layer.backward(x, dy, dx, ctx);
      t[1] = seconds_since(start, "backward");
      queued[bwd_queued] += apps::run_queue_seconds();
    }
    // A pass's own time: its wall time less this rank's run-queue waits in it, on the rank where
    // that is least. The ranks meet in the exchanges, so a rank held off its core delays the
    // others, whose waits for it are sleeps, not run-queue time: the least-disturbed rank's
    // figure is the pass as the machine would run it with nobody else on it.
    double own[2] = {t[0] - queued[fwd_queued], t[1] - queued[bwd_queued]};
    world.allreduce(std::span<double>(own), comm::ReduceOp::min);
    // Each phase's CPU time on the calling thread (runtime/stats.hpp), the slowest rank's.
    double cpu[2 * kNumPhases];
    std::copy(phase_cpu_seconds.forward.begin(), phase_cpu_seconds.forward.end(), cpu);
    std::copy(phase_cpu_seconds.backward.begin(), phase_cpu_seconds.backward.end(), cpu + kNumPhases);
    if (o.forward_only) std::fill(cpu + kNumPhases, cpu + 2 * kNumPhases, 0.0);
    world.allreduce(std::span<double>(cpu), comm::ReduceOp::max);
    std::copy(r.stats.phase_seconds.begin(), r.stats.phase_seconds.end(), t + 2);
    std::copy(ctx.backward_phase_seconds().begin(), ctx.backward_phase_seconds().end(),
              t + 2 + kNumPhases);
    double* extra = t + 2 + 2 * kNumPhases;
    extra[count_exchange] = r.stats.count_exchange_seconds;
    extra[fill] = r.stats.fill_seconds;
    extra[bwd_fill] = ctx.backward_fill_seconds();
    // This rank's time in no phase (the statistics' allgather, the call itself).
    extra[fwd_outside] = t[0];
    extra[bwd_outside] = t[1];
    for (std::size_t p = 0; p < kNumPhases; ++p) {
      extra[fwd_outside] -= t[2 + p];
      if (!o.forward_only) extra[bwd_outside] -= t[2 + kNumPhases + p];
    }
    world.allreduce(std::span<double>(t), comm::ReduceOp::max);
    // Time inside the exchanges: the rank that waited least for its peers shows the transfer
    // itself (the others add waiting for a slower rank's compute).
    double exchange[2] = {r.stats.exchange_seconds, ctx.backward_exchange_seconds()};
    world.allreduce(std::span<double>(exchange), comm::ReduceOp::min);
    double shared = r.stats.shared_expert_seconds;  // inside the experts phase, beside the dispatch
    world.allreduce(std::span<double>(&shared, 1), comm::ReduceOp::max);

    // Floors, right after, with this call's shapes.
    const auto first = r.stats.expert_kept.begin() + layer.first_expert();
    const std::vector<std::int64_t> rows(first, first + layer.local_experts());
    double floor_t[3] = {0, 0, 0};
    world.barrier();
    queued[gemm_fwd_queued] = -apps::run_queue_seconds();
    start = Clock::now();
    gemm_fwd_flops = experts::run_forward_gemms(layer.experts(), rows, gemm_ws, c.compute);
    floor_t[0] = seconds_since(start, "floor: forward GEMMs");
    queued[gemm_fwd_queued] += apps::run_queue_seconds();
    if (!o.forward_only) {
      queued[gemm_bwd_queued] = -apps::run_queue_seconds();
      start = Clock::now();
      gemm_bwd_flops = experts::run_backward_gemms(layer.experts(), rows, gemm_ws, c.compute);
      floor_t[1] = seconds_since(start, "floor: backward GEMMs");
      queued[gemm_bwd_queued] += apps::run_queue_seconds();
    }
    // The GEMM floors do not wait for each other: the slowest rank's own time.
    double floor_own[2] = {floor_t[0] - queued[gemm_fwd_queued], floor_t[1] - queued[gemm_bwd_queued]};
    world.allreduce(std::span<double>(floor_own), comm::ReduceOp::max);
    if (!raw) raw.emplace(world, o.link.enabled() ? &ep : nullptr, r.stats, row_bytes);
    world.barrier();
    start = Clock::now();
    raw->run();
    floor_t[2] = seconds_since(start, "floor: plain all-to-all");
    world.allreduce(std::span<double>(floor_t), comm::ReduceOp::max);
    if (i < o.warmup) continue;

    series.add("fwd", t[0]);
    series.add("bwd", t[1]);
    for (std::size_t p = 0; p < kNumPhases; ++p) {
      series.add("fwd_cpu." + std::string(kPhaseNames[p]), cpu[p]);
      series.add("bwd_cpu." + std::string(kPhaseNames[p]), cpu[kNumPhases + p]);
      series.add("fwd." + std::string(kPhaseNames[p]), t[2 + p]);
      series.add("bwd." + std::string(kPhaseNames[p]), t[2 + kNumPhases + p]);
    }
    series.add("fwd.count_exchange", extra[count_exchange]);
    series.add("fwd.fill", extra[fill]);
    series.add("bwd.fill", extra[bwd_fill]);
    series.add("fwd.outside", extra[fwd_outside]);
    series.add("bwd.outside", extra[bwd_outside]);
    series.add("exchange", exchange[0]);
    series.add("bwd_exchange", exchange[1]);
    series.add("shared_expert", shared);
    series.add("fwd_own", own[0]);
    series.add("bwd_own", own[1]);
    series.add("gemm_fwd_own", floor_own[0]);
    series.add("gemm_bwd_own", floor_own[1]);
    series.add("gemm_fwd", floor_t[0]);
    series.add("gemm_bwd", floor_t[1]);
    series.add("raw_alltoallv", floor_t[2]);
  }

  const ForwardStats& stats = ctx.result().stats;
  const LoadFigures load = load_figures(world, layer, stats);
  const apps::NodeSpread spread = apps::node_spread(ep, layer, ctx);
  if (rank != 0) return {};
  const double fwd_ms = series.median_ms("fwd"), bwd_ms = series.median_ms("bwd");
  const double gemm_fwd_ms = series.median_ms("gemm_fwd"), gemm_bwd_ms = series.median_ms("gemm_bwd");
  const double exchange_ms = series.median_ms("exchange");
  const double raw_ms = series.median_ms("raw_alltoallv");
  // nccl-tests conventions: algbw is the bytes one rank sends over the time; for an all-to-all
  // the bus bandwidth factor is (P-1)/P, the share of a rank's data that leaves it.
  const int p_size = world.size();
  const double all_bytes = static_cast<double>(
      (std::accumulate(stats.rows_to_peer.begin(), stats.rows_to_peer.end(), std::int64_t{0}) +
       std::accumulate(stats.rows_from_peer.begin(), stats.rows_from_peer.end(), std::int64_t{0})) *
      row_bytes);
  const double algbw = exchange_ms > 0 ? all_bytes / (exchange_ms / 1e3) / 1e9 : 0.0;
  const double busbw = algbw * (p_size - 1) / p_size;
  const double gemm_ms = gemm_fwd_ms + gemm_bwd_ms;

  nlohmann::json j;
  j["ranks"] = p_size;
  j["tokens_per_rank"] = o.tokens;
  j["config"] = c.summary();
  j["chunks"] = layer.chunks();
  // Every configuration field by name (the table's text forms: "auto", "bf16", ...).
  for (const auto& [name, value] : c.fields()) j[name] = value;
  j["wire"] = std::string(to_string(c.wire_format()));  // what the rows really travelled as
  j["link"] = apps::link_summary(o.link);
  j["fwd_ms"] = fwd_ms;
  j["bwd_ms"] = bwd_ms;
  // The same less the run-queue waits (apps/run_queue.hpp): what the layer itself took, on a
  // machine that others share.
  j["fwd_own_ms"] = series.median_ms("fwd_own");
  j["bwd_own_ms"] = series.median_ms("bwd_own");
  j["gemm_fwd_own_ms"] = series.median_ms("gemm_fwd_own");
  j["gemm_bwd_own_ms"] = series.median_ms("gemm_bwd_own");
  j["gemm_fwd_ms"] = gemm_fwd_ms;
  j["gemm_bwd_ms"] = gemm_bwd_ms;
  j["gemm_gflops"] = gemm_ms > 0 ? (gemm_fwd_flops + gemm_bwd_flops) / (gemm_ms / 1e3) / 1e9 : 0.0;
  j["layer_over_gemm"] = gemm_ms > 0 ? (fwd_ms + bwd_ms) / gemm_ms : 0.0;
  j["exchange_ms"] = exchange_ms;
  j["bwd_exchange_ms"] = series.median_ms("bwd_exchange");
  // Overlap: the forward against the longer of its exchanges and its expert compute.
  const double compute_ms = series.median_ms("fwd.experts");
  j["compute_ms"] = compute_ms;
  j["shared_expert_ms"] = series.median_ms("shared_expert");
  j["fwd_over_max_exchange_compute"] = fwd_ms / std::max({exchange_ms, compute_ms, 1e-9});
  const double bwd_exchange_ms = series.median_ms("bwd_exchange"), bwd_compute_ms = series.median_ms("bwd.experts");
  j["bwd_compute_ms"] = bwd_compute_ms;
  j["bwd_over_max_exchange_compute"] =
      o.forward_only ? 0.0 : bwd_ms / std::max({bwd_exchange_ms, bwd_compute_ms, 1e-9});
  j["raw_alltoallv_ms"] = raw_ms;
  j["exchange_over_raw"] = raw_ms > 0 ? exchange_ms / raw_ms : 0.0;
  j["algbw_gbs"] = algbw;
  j["busbw_gbs"] = busbw;
  j["tokens_per_s"] = static_cast<double>(stats.total_tokens) / ((fwd_ms + bwd_ms) / 1e3);
  j["total_tokens"] = stats.total_tokens;
  j["dropped_assignments"] = stats.dropped_assignments;
  j["dropped_tokens"] = stats.dropped_tokens;
  j["routing"] = o.routing_spec.text;
  j["load_max_over_mean"] = load.expert_max_over_mean;
  j["rank_load_max_over_mean"] = load.rank_max_over_mean;
  j["link_bytes_max"] = load.link_bytes_max;
  // Across nodes (ranks_per_node, or the hosts): one forward's payload, whole group, both
  // exchanges; and how many nodes each token's kept choices reach.
  j["nodes"] = layer.topology().num_nodes;
  j["internode_bytes"] = stats.internode_bytes;
  j["internode_messages"] = stats.internode_messages;
  j["nodes_per_token_mean"] = spread.mean;
  j["nodes_per_token_max"] = spread.most;
  j["expert_counts"] = stats.expert_counts;
  j["expert_kept"] = stats.expert_kept;
  j["load_min"] = stats.load_min;
  j["load_std"] = stats.load_std;
  for (std::size_t p = 0; p < kNumPhases; ++p) {
    const std::string name(kPhaseNames[p]);
    j["fwd_phase_ms"][name] = series.median_ms("fwd." + name);
    j["bwd_phase_ms"][name] = series.median_ms("bwd." + name);
    j["fwd_phase_cpu_ms"][name] = series.median_ms("fwd_cpu." + name);
    j["bwd_phase_cpu_ms"][name] = series.median_ms("bwd_cpu." + name);
  }
  // The pipeline's overheads over max(exchange, compute) (runtime/stats.hpp): the count exchange
  // (inside route), the fill (the wait for the first chunk), the stalls (waits for later chunks),
  // the drain (exchange_back: the wait for the last returns), and what no phase holds (the
  // statistics' allgather and the call itself).
  for (const char* pass : {"fwd", "bwd"}) {
    const std::string p(pass);
    nlohmann::json& b = j[p + "_overheads_ms"];
    if (p == "fwd") b["count_exchange"] = series.median_ms("fwd.count_exchange");
    b["fill"] = series.median_ms(p + ".fill");
    b["stalls"] = std::max(0.0, series.median_ms(p + ".exchange") - series.median_ms(p + ".fill"));
    b["drain"] = series.median_ms(p + ".exchange_back");
    b["outside_phases"] = series.median_ms(p + ".outside");
  }
  return j;
}

void print_table(const nlohmann::json& j, const Options& o) {
  const auto counts = j["expert_counts"].get<std::vector<std::int64_t>>();
  const auto kept = j["expert_kept"].get<std::vector<std::int64_t>>();
  const auto total_tokens = j["total_tokens"].get<std::int64_t>();
  const auto dropped = j["dropped_assignments"].get<std::int64_t>();
  const auto ms = [&](const char* key) { return j[key].get<double>(); };
  const std::int64_t assignments = total_tokens * o.layer.config.top_k;
  std::printf("moe-bench: %d ranks x %lld tokens, %s, link %s, chunks used %d\n", j["ranks"].get<int>(),
              static_cast<long long>(o.tokens), j["config"].get<std::string>().c_str(),
              j["link"].get<std::string>().c_str(), j["chunks"].get<int>());
  std::printf("routing %s: load max/mean %.3f (experts), %.3f (ranks' kept rows)\n",
              o.routing_spec.text.c_str(), ms("load_max_over_mean"), ms("rank_load_max_over_mean"));
  std::printf("routing: %lld assignments, %lld dropped (%.2f%%), %lld tokens lost every choice\n",
              static_cast<long long>(assignments), static_cast<long long>(dropped),
              assignments ? 100.0 * static_cast<double>(dropped) / static_cast<double>(assignments) : 0.0,
              static_cast<long long>(j["dropped_tokens"].get<std::int64_t>()));
  std::printf("\n%-8s %10s %10s\n", "expert", "assigned", "kept");
  for (std::size_t e = 0; e < counts.size(); ++e) {
    std::printf("%-8zu %10lld %10lld\n", e, static_cast<long long>(counts[e]), static_cast<long long>(kept[e]));
  }
  std::printf("\nmedians of %d iterations, slowest rank, ms\n", o.iters);
  std::printf("%-16s %10s %10s\n", "phase", "forward", "backward");
  for (std::size_t p = 0; p < kNumPhases; ++p) {
    const std::string name(kPhaseNames[p]);
    std::printf("%-16s %10.3f %10.3f\n", name.c_str(), j["fwd_phase_ms"][name].get<double>(),
                j["bwd_phase_ms"][name].get<double>());
  }
  std::printf("%-16s %10.3f %10.3f   %.0f tokens/s (forward+backward)\n", "total", ms("fwd_ms"),
              ms("bwd_ms"), ms("tokens_per_s"));
  std::printf("%-16s %10.3f %10.3f   %.1f GFLOP/s per rank (compute %s)\n", "expert GEMMs",
              ms("gemm_fwd_ms"), ms("gemm_bwd_ms"), ms("gemm_gflops"), j["compute"].get<std::string>().c_str());
  std::printf("\n%-34s %8.3f\n", "(fwd + bwd) / (GEMMs alone)", ms("layer_over_gemm"));
  std::printf("%-34s %8.3f ms  algbw %.2f GB/s  busbw %.2f GB/s (%s wire)\n", "exchanges of one forward",
              ms("exchange_ms"), ms("algbw_gbs"), ms("busbw_gbs"), j["wire"].get<std::string>().c_str());
  std::printf("%-34s %8.3f     (expert compute %.3f ms)\n", "forward / max(exchange, compute)",
              ms("fwd_over_max_exchange_compute"), ms("compute_ms"));
  if (!o.forward_only) {
    std::printf("%-34s %8.3f     (expert compute %.3f ms, exchanges %.3f ms)\n",
                "backward / max(exchange, compute)", ms("bwd_over_max_exchange_compute"),
                ms("bwd_compute_ms"), ms("bwd_exchange_ms"));
  }
  for (const char* pass : {"fwd", "bwd"}) {
    if (std::string(pass) == "bwd" && o.forward_only) continue;
    const nlohmann::json& b = j[std::string(pass) + "_overheads_ms"];
    std::printf("  %s waits, ms: fill %.3f  stalls %.3f  drain %.3f  outside phases %.3f", pass,
                b["fill"].get<double>(), b["stalls"].get<double>(), b["drain"].get<double>(),
                b["outside_phases"].get<double>());
    if (b.contains("count_exchange")) std::printf("  count exchange %.3f", b["count_exchange"].get<double>());
    std::printf("\n");
    const nlohmann::json& cpu = j[std::string(pass) + "_phase_cpu_ms"];
    std::printf("  %s CPU of the calling thread, ms: route %.3f  permute %.3f  experts %.3f  combine %.3f"
                "  (own time %.3f)\n", pass, cpu["route"].get<double>(), cpu["permute"].get<double>(),
                cpu["experts"].get<double>(), cpu["combine"].get<double>(),
                j[std::string(pass) + "_own_ms"].get<double>());
  }
  std::printf("%-34s %8.3f ms  (ratio %.3f)\n", "plain MPI_Alltoallv, same bytes", ms("raw_alltoallv_ms"),
              ms("exchange_over_raw"));
  std::printf("%-34s %8.1f MB in %lld messages (%d nodes; a token reaches %.2f nodes, at most %lld)\n",
              "between nodes, one forward", ms("internode_bytes") / 1e6,
              j["internode_messages"].get<long long>(), j["nodes"].get<int>(), ms("nodes_per_token_mean"),
              j["nodes_per_token_max"].get<long long>());
}

// The two precisions side by side (`a` as run first, `b` the other), and b's speed-up over a.
void print_comparison(const nlohmann::json& a, const nlohmann::json& b) {
  std::printf("\n%-28s %12s %12s\n", "compute", a["compute"].get<std::string>().c_str(),
              b["compute"].get<std::string>().c_str());
  for (const char* key : {"fwd_ms", "bwd_ms", "gemm_fwd_ms", "gemm_bwd_ms", "gemm_gflops", "layer_over_gemm",
                          "exchange_ms", "fwd_over_max_exchange_compute"}) {
    std::printf("%-28s %12.3f %12.3f\n", key, a[key].get<double>(), b[key].get<double>());
  }
  std::printf("%-28s %12s %12.3f\n", "speed-up of fwd+bwd", "", b["speedup_over_first"].get<double>());
}

// --device cuda|host-launcher: the device layer's times only (apps/device_bench.hpp).
int bench_device(comm::MpiCommunicator& world, const Options& o) {
  const nlohmann::json j = apps::measure_device(
      world, o.layer.config,
      {.device = o.device, .tokens = o.tokens, .iters = o.iters, .warmup = o.warmup, .seed = o.seed,
       .forward_only = o.forward_only});
  if (world.rank() != 0) return 0;
  if (o.json) {
    std::cout << j.dump() << std::endl;
  } else {
    apps::print_device_table(j);
  }
  return 0;
}

int bench(comm::MpiCommunicator& world, const Options& o) {
  apps::apply_watchdog(o.execution, world);
  if (o.device.kind != apps::DeviceKind::host) return bench_device(world, o);
  apps::start_trace(o.trace, world);  // with --compare-compute, both measurements in one timeline
  nlohmann::json j = measure(world, o, o.layer.config);
  nlohmann::json other;
  if (o.compare_compute) {
    MoeConfig c = o.layer.config;
    c.compute = c.compute == experts::Compute::fp32 ? experts::Compute::bf16 : experts::Compute::fp32;
    other = measure(world, o, c);
  }
  apps::finish_trace(o.trace, world, "moe-bench");
  if (world.rank() != 0) return 0;
  if (o.compare_compute) {
    const double first = j["fwd_ms"].get<double>() + j["bwd_ms"].get<double>();
    const double second = other["fwd_ms"].get<double>() + other["bwd_ms"].get<double>();
    other["speedup_over_first"] = second > 0 ? first / second : 0.0;
    // The other precision's figures, under its compute name ("bf16": {...}).
    j[other["compute"].get<std::string>()] = other;
  }
  if (o.json) {
    std::cout << j.dump() << std::endl;
    return 0;
  }
  print_table(j, o);
  if (o.compare_compute) print_comparison(j, other);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return apps::run_mpi_program("moe-bench", argc, argv, [&](comm::MpiCommunicator& world) {
    const auto options = parse_options(argc, argv, world.rank());
    return options ? bench(world, *options) : 0;
  });
}
