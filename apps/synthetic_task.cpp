#include "apps/synthetic_task.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "runtime/initialization.hpp"

namespace moe::apps {
namespace {

std::size_t sz(std::int64_t n) { return static_cast<std::size_t>(n); }

void scale(std::vector<float>& v, double factor) {
  for (float& x : v) x = static_cast<float>(x * factor);
}

}  // namespace

SyntheticTask::SyntheticTask(const TaskConfig& c) : config_(c) {
  if (c.d_model <= 0 || c.d_out <= 0 || c.clusters <= 0 || c.target_hidden <= 0 || !(c.noise >= 0)) {
    throw std::invalid_argument("SyntheticTask: dimensions and clusters must be > 0, noise >= 0");
  }
  const std::int64_t k = c.clusters, d = c.d_model, m = c.target_hidden;
  centers_.resize(sz(k * d));
  a_.resize(sz(k * m * d));
  a_bias_.resize(sz(k * m));
  b_.resize(sz(k * c.d_out * m));
  fill_normal(centers_, c.seed, "task.centers");
  fill_normal(a_, c.seed, "task.a");
  fill_normal(a_bias_, c.seed, "task.a_bias");
  fill_normal(b_, c.seed, "task.b");
  // Unit-variance pre-activations from the noise, and targets of variance about E[tanh²].
  scale(a_, 1.0 / std::sqrt(static_cast<double>(d)));
  scale(a_bias_, 0.5);
  scale(b_, 1.0 / std::sqrt(static_cast<double>(m)));
}

void SyntheticTask::make_batch(std::string_view stream, std::int64_t first, std::int64_t count,
                               Batch& out) const {
  const TaskConfig& c = config_;
  const std::int64_t d = c.d_model, m = c.target_hidden, d_out = c.d_out;
  const std::string prefix(stream);
  out.tokens = count;
  out.x.resize(sz(count * d));
  out.target.resize(sz(count * d_out));
  out.cluster.resize(sz(count));
  std::vector<float> noise(sz(count * d));
  for (std::int64_t t = 0; t < count; ++t) {
    const std::string token = std::to_string(first + t);
    float u = 0;
    fill_uniform(std::span<float>(&u, 1), 1.0f, c.seed, prefix + ".cluster." + token);
    const auto cluster = std::min<std::int64_t>(
        c.clusters - 1, static_cast<std::int64_t>((u + 1.0f) * 0.5f * static_cast<float>(c.clusters)));
    out.cluster[sz(t)] = cluster;
    const std::span<float> n(noise.data() + t * d, sz(d));
    fill_normal(n, c.seed, prefix + ".noise." + token);
    const float* center = centers_.data() + cluster * d;
    for (std::int64_t i = 0; i < d; ++i) {
      out.x[sz(t * d + i)] = center[i] + static_cast<float>(c.noise) * n[sz(i)];
    }
  }
  // Targets token by token in double, not by GEMMs over the batch: a GEMM's rounding depends on
  // how many rows it gets (oneDNN's sgemm takes another path below 16 rows), and a token's target
  // must not depend on which other tokens share its batch, or a run on another rank count would
  // see other data. The cost (m·(d + d_out) per token) is small next to the model's.
  std::vector<double> hidden(sz(m));
  for (std::int64_t t = 0; t < count; ++t) {
    const std::int64_t k = out.cluster[sz(t)];
    const float* n = noise.data() + t * d;
    for (std::int64_t j = 0; j < m; ++j) {
      const float* a = a_.data() + (k * m + j) * d;
      double pre = a_bias_[sz(k * m + j)];
      for (std::int64_t i = 0; i < d; ++i) pre += static_cast<double>(a[i]) * n[i];
      hidden[sz(j)] = std::tanh(pre);
    }
    for (std::int64_t o = 0; o < d_out; ++o) {
      const float* b = b_.data() + (k * d_out + o) * m;
      double y = 0;
      for (std::int64_t j = 0; j < m; ++j) y += static_cast<double>(b[j]) * hidden[sz(j)];
      out.target[sz(t * d_out + o)] = static_cast<float>(y);
    }
  }
}

}  // namespace moe::apps
