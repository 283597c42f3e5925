// Times ffn_forward and ffn_backward on one shard in fp32 and bf16; run it single-threaded
// (OMP_NUM_THREADS=1) to read per-core GFLOP/s. Default shape: the standard one (4 local experts
// x 640 rows, d=512, h=1024).
//   bench_ffn [--activation gelu] [--experts 4] [--rows 640] [--d 512] [--h 1024] [--reps 15]
//             [--policy auto|sgemm|blocked]
// Columns: precision, pass, median/min ms over the repetitions after one warm-up, GFLOP/s of the
// median and of the minimum counting 2*M*N*K per GEMM. The passes run round-robin so that all see
// the same load of a shared machine. "gemm floor" runs the same code with the elementwise work
// left out (experts/gemm_floor.hpp), so the difference is the cost of bias, activation,
// derivative and bf16 conversions. "unfused" adds the biases in passes of their own instead of
// inside the GEMMs; "act fused" times the first layer alone with bias and activation inside the
// GEMM (oneDNN post-ops) against GEMM + the activation pass.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "experts/activation_kernels.hpp"
#include "experts/ffn_work.hpp"
#include "experts/gemm.hpp"
#include "experts/gemm_floor.hpp"
#include "experts/matmul_cache.hpp"

namespace {

using namespace moe::experts;

struct Options {
  Activation activation = Activation::gelu;
  std::int64_t experts = 4;
  std::int64_t rows = 640;
  std::int64_t d = 512;
  std::int64_t h = 1024;
  int reps = 15;
  std::string policy = "auto";
};

Options parse(int argc, char** argv) {
  Options o;
  if (argc % 2 == 0) throw std::invalid_argument("every option takes a value");
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string_view key = argv[i];
    const std::string value = argv[i + 1];
    if (key == "--activation") {
      const auto a = parse_activation(value);
      if (!a) throw std::invalid_argument("unknown activation " + value);
      o.activation = *a;
    } else if (key == "--experts") {
      o.experts = std::stoll(value);
    } else if (key == "--rows") {
      o.rows = std::stoll(value);
    } else if (key == "--d") {
      o.d = std::stoll(value);
    } else if (key == "--h") {
      o.h = std::stoll(value);
    } else if (key == "--reps") {
      o.reps = std::stoi(value);
    } else if (key == "--policy" && (value == "auto" || value == "sgemm" || value == "blocked")) {
      o.policy = value;
    } else {
      throw std::invalid_argument("unknown option " + std::string(key) + " " + value);
    }
  }
  return o;
}

struct Timing {
  double median_ms;
  double min_ms;
};

// One measured pass: what it runs and the floating-point operations it counts.
struct Pass {
  Compute compute;
  std::string name;
  std::function<void()> run;
  double flops;
};

// Runs the passes round-robin, `reps` rounds after one warm-up each, so that every pass sees the
// same machine load (the machine is shared; compare ratios within one run), and prints them.
void measure(const std::vector<Pass>& passes, int reps) {
  for (const Pass& p : passes) p.run();  // first-touch of buffers, oneDNN's primitives
  std::vector<std::vector<double>> ms(passes.size());
  for (int r = 0; r < reps; ++r) {
    for (std::size_t i = 0; i < passes.size(); ++i) {
      const auto start = std::chrono::steady_clock::now();
      passes[i].run();
      const auto stop = std::chrono::steady_clock::now();
      ms[i].push_back(std::chrono::duration<double, std::milli>(stop - start).count());
    }
  }
  for (std::size_t i = 0; i < passes.size(); ++i) {
    std::sort(ms[i].begin(), ms[i].end());
    const Timing t{ms[i][ms[i].size() / 2], ms[i].front()};
    std::printf("%-5s %-30s %10.3f %10.3f %10.1f %10.1f\n",
                std::string(to_string(passes[i].compute)).c_str(), passes[i].name.c_str(),
                t.median_ms, t.min_ms, passes[i].flops / (t.median_ms * 1e-3) / 1e9,
                passes[i].flops / (t.min_ms * 1e-3) / 1e9);
  }
}

void fill(std::span<float> v, std::mt19937& rng, float scale) {
  std::uniform_real_distribution<float> dist(-scale, scale);
  for (float& x : v) x = dist(rng);
}

struct Bench {
  Options o;
  ExpertShard shard, grads;
  std::vector<float> x, y, dy, dx;
  std::vector<std::int64_t> offsets, rows;
  FfnActivations saved;
  GemmFloorWorkspace floor;
  std::vector<float> pre, act;  // first layer alone
  double fwd_flops = 0, bwd_flops = 0;
};

Bench make_bench(const Options& o) {
  Bench b{o, ExpertShard(o.experts, {o.d, o.h, o.activation}),
          ExpertShard(o.experts, {o.d, o.h, o.activation}), {}, {}, {}, {}, {}, {}, {}, {}, {}, {},
          0, 0};
  std::mt19937 rng(42);
  for (std::int64_t e = 0; e < o.experts; ++e) {
    for (const auto name : expert_param_names(o.activation)) {
      fill(b.shard.param(e, name), rng, 1.0f / std::sqrt(static_cast<float>(o.d)));
    }
  }
  const auto nd = static_cast<std::size_t>(o.experts * o.rows * o.d);
  for (auto* v : {&b.x, &b.y, &b.dy, &b.dx}) v->resize(nd);
  fill(b.x, rng, 1.0f);
  fill(b.dy, rng, 1.0f);
  for (std::int64_t e = 0; e <= o.experts; ++e) b.offsets.push_back(e * o.rows);
  b.rows.assign(static_cast<std::size_t>(o.experts), o.rows);
  const double gemm = 2.0 * static_cast<double>(o.experts * o.rows) * static_cast<double>(o.d) *
                      static_cast<double>(o.h);
  const bool gated = is_gated(o.activation);
  b.fwd_flops = (gated ? 3 : 2) * gemm;
  b.bwd_flops = (gated ? 6 : 4) * gemm;
  return b;
}

// Forward, forward+backward (biases fused and not) and the GEMM floor in one precision.
void add_precision(std::vector<Pass>& passes, Bench& b, Compute compute) {
  for (const bool fuse : {true, false}) {
    const FfnWork work{.elementwise = true, .fuse_bias = fuse};
    passes.push_back({compute, fuse ? "forward" : "forward (biases unfused)", [&b, compute, work] {
      ffn_forward(b.shard, b.x, b.offsets, b.y, b.saved, compute, work);
    }, b.fwd_flops});
    passes.push_back({compute, fuse ? "forward+backward" : "forward+backward (unfused)",
                      [&b, compute, work] {
      ffn_forward(b.shard, b.x, b.offsets, b.y, b.saved, compute, work);
      ffn_backward(b.shard, b.x, b.offsets, b.saved, b.dy, b.dx, b.grads, work);
    }, b.fwd_flops + b.bwd_flops});
  }
  // The other row policy of experts/matmul_cache.hpp, for comparison with the one in force.
  using detail::RowPolicy;
  const auto other =
      detail::row_policy() == RowPolicy::blocked ? RowPolicy::sgemm : RowPolicy::blocked;
  const char* name = other == RowPolicy::blocked ? "forward+backward (blocked rows)"
                                                 : "forward+backward (sgemm rows)";
  passes.push_back({compute, name, [&b, compute, other] {
    const auto in_force = detail::row_policy();
    detail::set_row_policy(other);
    ffn_forward(b.shard, b.x, b.offsets, b.y, b.saved, compute);
    ffn_backward(b.shard, b.x, b.offsets, b.saved, b.dy, b.dx, b.grads);
    detail::set_row_policy(in_force);
  }, b.fwd_flops + b.bwd_flops});
  passes.push_back({compute, "gemm floor forward", [&b, compute] {
    run_forward_gemms(b.shard, b.rows, b.floor, compute);
  }, b.fwd_flops});
  passes.push_back({compute, "gemm floor forward+backward", [&b, compute] {
    run_forward_gemms(b.shard, b.rows, b.floor, compute);
    run_backward_gemms(b.shard, b.rows, b.floor, compute);
  }, b.fwd_flops + b.bwd_flops});
}

// The first layer of every expert with bias and activation inside the GEMM, against the GEMM
// (bias fused) then the activation pass: whether fusing the activation pays. Forward only: a
// training forward must keep the pre-activation for backward, which the fused form does not give.
void add_activation_fusion(std::vector<Pass>& passes, Bench& b) {
  if (is_gated(b.o.activation)) return;
  const std::int64_t d = b.o.d, h = b.o.h, m = b.o.rows;
  b.pre.resize(static_cast<std::size_t>(m * h));
  b.act.resize(b.pre.size());
  const auto first_layer = [&b, d, h, m](bool fused) {
    for (std::int64_t e = 0; e < b.o.experts; ++e) {
      const auto xe = std::span<const float>(b.x).subspan(static_cast<std::size_t>(e * m * d),
                                                          static_cast<std::size_t>(m * d));
      const Epilogue epilogue{.bias = b.shard.b1(e),
                              .activation = fused ? std::optional(b.o.activation) : std::nullopt};
      gemm(Op::none, Op::transpose, m, h, d, 1.0f, xe, d, std::as_const(b.shard).w1(e), d, 0.0f,
           fused ? std::span(b.act) : std::span(b.pre), h, epilogue);
      if (!fused) bias_activation_forward(b.o.activation, m, h, {}, b.pre, b.act);
    }
  };
  const double flops = b.fwd_flops / 2;
  passes.push_back({Compute::fp32, "first layer, act fused", [=] { first_layer(true); }, flops});
  passes.push_back({Compute::fp32, "first layer, act pass", [=] { first_layer(false); }, flops});
}

}  // namespace

int main(int argc, char** argv) try {
  const Options o = parse(argc, argv);
  if (o.policy != "auto") {
    detail::set_row_policy(o.policy == "blocked" ? detail::RowPolicy::blocked
                                                 : detail::RowPolicy::sgemm);
  }
  Bench b = make_bench(o);
  const char* threads = std::getenv("OMP_NUM_THREADS");
  std::printf("# ffn %s: %lld experts x %lld rows, d=%lld, h=%lld, OMP_NUM_THREADS=%s, %d reps\n",
              std::string(to_string(o.activation)).c_str(), static_cast<long long>(o.experts),
              static_cast<long long>(o.rows), static_cast<long long>(o.d),
              static_cast<long long>(o.h), threads != nullptr ? threads : "(unset)", o.reps);
  std::printf("# oneDNN: %s, row policy %s, bf16 %s\n",
              detail::implementation({.m = o.rows, .n = o.h, .k = o.d, .trans_b = true,
                                      .lda = o.d, .ldb = o.d, .ldc = o.h}).c_str(),
              detail::row_policy() == detail::RowPolicy::blocked ? "blocked" : "sgemm",
              bf16_is_native() ? "native" : "emulated (operands widened to fp32: no speed-up)");
  std::printf("%-5s %-30s %10s %10s %10s %10s\n", "#", "pass", "median_ms", "min_ms", "GFLOP/s",
              "at min");
  std::vector<Pass> passes;
  add_precision(passes, b, Compute::fp32);
  add_activation_fusion(passes, b);
  add_precision(passes, b, Compute::bf16);
  measure(passes, o.reps);

  const auto is_finite = [](float v) { return std::isfinite(v); };
  const bool finite = std::all_of(b.y.begin(), b.y.end(), is_finite) &&
                      std::all_of(b.dx.begin(), b.dx.end(), is_finite);
  if (!finite) std::fprintf(stderr, "bench_ffn: non-finite output or input gradient\n");
  return finite ? 0 : 1;
} catch (const std::exception& e) {
  std::fprintf(stderr, "bench_ffn: %s\n", e.what());
  return 2;
}
