// Times ffn_forward and ffn_backward on one shard; run it single-threaded (OMP_NUM_THREADS=1) to
// read per-core GFLOP/s. Default shape: the standard one (8 experts x 640 rows, d=512, h=1024).
//   bench_ffn [--activation gelu] [--experts 8] [--rows 640] [--d 512] [--h 1024] [--reps 15]
// Columns: pass, median/min ms over the repetitions after one warm-up, GFLOP/s of the median
// counting 2*M*N*K per GEMM. "gemm only" runs the same GEMMs without the elementwise work, so
// the difference is the cost of bias, activation and derivative.
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

#include "experts/gemm.hpp"
#include "experts/grouped_ffn.hpp"

namespace {

using moe::experts::Activation;
using moe::experts::ExpertShard;
using moe::experts::Op;

struct Options {
  Activation activation = Activation::gelu;
  std::int64_t experts = 8;
  std::int64_t rows = 640;
  std::int64_t d = 512;
  std::int64_t h = 1024;
  int reps = 15;
};

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string_view key = argv[i];
    const std::string value = argv[i + 1];
    if (key == "--activation") {
      const auto a = moe::experts::parse_activation(value);
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
    } else {
      throw std::invalid_argument("unknown option " + std::string(key));
    }
  }
  if (argc % 2 == 0) throw std::invalid_argument("every option takes a value");
  return o;
}

struct Timing {
  double median_ms;
  double min_ms;
};

Timing time_it(int reps, const std::function<void()>& run) {
  run();  // warm-up: first-touch of buffers, oneDNN's JIT kernels
  std::vector<double> ms;
  for (int i = 0; i < reps; ++i) {
    const auto start = std::chrono::steady_clock::now();
    run();
    const auto stop = std::chrono::steady_clock::now();
    ms.push_back(std::chrono::duration<double, std::milli>(stop - start).count());
  }
  std::sort(ms.begin(), ms.end());
  return {ms[ms.size() / 2], ms.front()};
}

void report(const char* pass, Timing t, double flops) {
  std::printf("%-22s %10.3f %10.3f %10.1f\n", pass, t.median_ms, t.min_ms,
              flops / (t.median_ms * 1e-3) / 1e9);
}

void fill(std::span<float> v, std::mt19937& rng, float scale) {
  std::uniform_real_distribution<float> dist(-scale, scale);
  for (float& x : v) x = dist(rng);
}

}  // namespace

int main(int argc, char** argv) try {
  const Options o = parse(argc, argv);
  const std::int64_t n = o.experts * o.rows;
  const auto nd = static_cast<std::size_t>(n * o.d);
  const auto nh = static_cast<std::size_t>(n * o.h);
  ExpertShard shard(o.experts, {o.d, o.h, o.activation});
  ExpertShard grads(o.experts, {o.d, o.h, o.activation});
  std::mt19937 rng(42);
  for (std::int64_t e = 0; e < o.experts; ++e) {
    for (const auto name : moe::experts::expert_param_names(o.activation)) {
      fill(shard.param(e, name), rng, 1.0f / std::sqrt(static_cast<float>(o.d)));
    }
  }
  std::vector<float> x(nd), y(nd), dy(nd), dx(nd);
  fill(x, rng, 1.0f);
  fill(dy, rng, 1.0f);
  std::vector<std::int64_t> offsets;
  for (std::int64_t e = 0; e <= o.experts; ++e) offsets.push_back(e * o.rows);
  moe::experts::FfnActivations saved;

  const bool gated = moe::experts::is_gated(o.activation);
  const double gemm_flops = 2.0 * static_cast<double>(n) * static_cast<double>(o.d) *
                            static_cast<double>(o.h);
  const double fwd_flops = (gated ? 3 : 2) * gemm_flops;
  const double bwd_flops = (gated ? 6 : 4) * gemm_flops;

  const Timing fwd = time_it(o.reps, [&] {
    moe::experts::ffn_forward(shard, x, offsets, y, saved);
  });
  const Timing bwd = time_it(o.reps, [&] {
    moe::experts::ffn_backward(shard, x, offsets, saved, dy, dx, grads);
  });
  const Timing both = time_it(o.reps, [&] {
    moe::experts::ffn_forward(shard, x, offsets, y, saved);
    moe::experts::ffn_backward(shard, x, offsets, saved, dy, dx, grads);
  });

  const bool finite = std::all_of(y.begin(), y.end(), [](float v) { return std::isfinite(v); }) &&
                      std::all_of(dx.begin(), dx.end(), [](float v) { return std::isfinite(v); });
  if (!finite) std::fprintf(stderr, "bench_ffn: non-finite output or input gradient\n");

  // The same GEMMs with nothing around them: the ceiling the layer can reach.
  std::vector<float> hidden(nh), grad_hidden(nh), out(nd), grad_in(nd);
  std::vector<float> wgrad1(static_cast<std::size_t>(o.h * o.d));
  std::vector<float> wgrad2(static_cast<std::size_t>(o.d * o.h));
  const ExpertShard& weights = shard;
  const Timing gemm_only = time_it(o.reps, [&] {
    using moe::experts::gemm;
    const std::int64_t d = o.d, h = o.h, m = o.rows;
    const auto rows = [](auto& v, std::int64_t e, std::int64_t cols, std::int64_t m_rows) {
      return std::span(v).subspan(static_cast<std::size_t>(e * m_rows * cols),
                                  static_cast<std::size_t>(m_rows * cols));
    };
    for (std::int64_t e = 0; e < o.experts; ++e) {
      const auto xe = rows(std::as_const(x), e, d, m);
      const auto dye = rows(std::as_const(dy), e, d, m);
      const auto he = rows(hidden, e, h, m);
      const auto ghe = rows(grad_hidden, e, h, m);
      const auto w1 = weights.w1(e);
      const auto w2 = weights.w2(e);
      for (int g = 0; g < (gated ? 2 : 1); ++g) {  // forward: x·w1ᵀ (and x·w3ᵀ)
        gemm(Op::none, Op::transpose, m, h, d, 1.0f, xe, d, w1, d, 0.0f, he, h);
      }
      gemm(Op::none, Op::transpose, m, d, h, 1.0f, he, h, w2, h, 0.0f, rows(out, e, d, m), d);
      // backward: dY·W2, dYᵀ·A, then per first-layer weight dHᵀ·X and dH·W
      gemm(Op::none, Op::none, m, h, d, 1.0f, dye, d, w2, h, 0.0f, ghe, h);
      gemm(Op::transpose, Op::none, d, h, m, 1.0f, dye, d, he, h, 1.0f, wgrad2, h);
      for (int g = 0; g < (gated ? 2 : 1); ++g) {
        gemm(Op::transpose, Op::none, h, d, m, 1.0f, ghe, h, xe, d, 1.0f, wgrad1, d);
        gemm(Op::none, Op::none, m, d, h, 1.0f, ghe, h, w1, d, g == 0 ? 0.0f : 1.0f,
             rows(grad_in, e, d, m), d);
      }
    }
  });

  const char* threads = std::getenv("OMP_NUM_THREADS");
  std::printf("# ffn %s: %lld experts x %lld rows, d=%lld, h=%lld, OMP_NUM_THREADS=%s, %d reps\n",
              std::string(moe::experts::to_string(o.activation)).c_str(),
              static_cast<long long>(o.experts), static_cast<long long>(o.rows),
              static_cast<long long>(o.d), static_cast<long long>(o.h),
              threads != nullptr ? threads : "(unset)", o.reps);
  std::printf("%-22s %10s %10s %10s\n", "# pass", "median_ms", "min_ms", "GFLOP/s");
  report("forward", fwd, fwd_flops);
  report("backward", bwd, bwd_flops);
  report("forward+backward", both, fwd_flops + bwd_flops);
  report("gemm only (fwd+bwd)", gemm_only, fwd_flops + bwd_flops);

  return finite ? 0 : 1;
} catch (const std::exception& e) {
  std::fprintf(stderr, "bench_ffn: %s\n", e.what());
  return 2;
}
