#include "apps/layer_norm.hpp"

#include <cmath>
#include <stdexcept>

namespace moe::apps {

void layer_norm_forward(std::span<const float> x, std::int64_t d, std::span<const float> weight,
                        std::span<const float> bias, std::span<float> y, LayerNormSaved& saved) {
  const std::size_t n = static_cast<std::size_t>(d);
  if (d <= 0 || x.size() % n != 0 || y.size() != x.size() || weight.size() != n || bias.size() != n) {
    throw std::invalid_argument("layer_norm_forward: inconsistent sizes");
  }
  const std::size_t rows = x.size() / n;
  saved.mean.resize(rows);
  saved.rstd.resize(rows);
  for (std::size_t r = 0; r < rows; ++r) {
    const float* xr = x.data() + r * n;
    double sum = 0;
    for (std::size_t i = 0; i < n; ++i) sum += xr[i];
    const double mean = sum / static_cast<double>(n);
    double sq = 0;
    for (std::size_t i = 0; i < n; ++i) sq += (xr[i] - mean) * (xr[i] - mean);
    const float m = static_cast<float>(mean);
    const float rstd = static_cast<float>(1.0 / std::sqrt(sq / static_cast<double>(n) + kLayerNormEps));
    saved.mean[r] = m;
    saved.rstd[r] = rstd;
    float* yr = y.data() + r * n;
    for (std::size_t i = 0; i < n; ++i) yr[i] = (xr[i] - m) * rstd * weight[i] + bias[i];
  }
}

void layer_norm_backward(std::span<const float> x, std::int64_t d, std::span<const float> weight,
                         const LayerNormSaved& saved, std::span<const float> dy,
                         std::span<float> dx, std::span<float> grad_weight,
                         std::span<float> grad_bias) {
  const std::size_t n = static_cast<std::size_t>(d);
  const std::size_t rows = saved.mean.size();
  if (x.size() != rows * n || dy.size() != x.size() || dx.size() != x.size() ||
      weight.size() != n || grad_weight.size() != n || grad_bias.size() != n) {
    throw std::invalid_argument("layer_norm_backward: inconsistent sizes");
  }
  for (std::size_t r = 0; r < rows; ++r) {
    const float* xr = x.data() + r * n;
    const float* dyr = dy.data() + r * n;
    float* dxr = dx.data() + r * n;
    const float m = saved.mean[r], rstd = saved.rstd[r];
    // With xhat = (x - mean)·rstd and g = dy·weight:
    // dx = rstd · (g - mean(g) - xhat · mean(g · xhat)).
    double sum_g = 0, sum_g_xhat = 0;
    for (std::size_t i = 0; i < n; ++i) {
      const float xhat = (xr[i] - m) * rstd;
      const float g = dyr[i] * weight[i];
      sum_g += g;
      sum_g_xhat += static_cast<double>(g) * xhat;
      grad_weight[i] += dyr[i] * xhat;
      grad_bias[i] += dyr[i];
    }
    const float mean_g = static_cast<float>(sum_g / static_cast<double>(n));
    const float mean_g_xhat = static_cast<float>(sum_g_xhat / static_cast<double>(n));
    for (std::size_t i = 0; i < n; ++i) {
      const float xhat = (xr[i] - m) * rstd;
      dxr[i] = rstd * (dyr[i] * weight[i] - mean_g - xhat * mean_g_xhat);
    }
  }
}

}  // namespace moe::apps
