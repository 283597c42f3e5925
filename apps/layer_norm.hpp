// LayerNorm over the last dimension, as torch.nn.LayerNorm(d, eps=1e-5) computes it, with its
// backward. Rows are independent; statistics are accumulated in double for stability.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace moe::apps {

// What backward needs from forward: per row, the mean and 1/sqrt(var + eps).
struct LayerNormSaved {
  std::vector<float> mean;
  std::vector<float> rstd;
};

inline constexpr float kLayerNormEps = 1e-5f;

// x, y: [rows, d]; weight, bias: [d]. y = (x - mean) * rstd * weight + bias.
void layer_norm_forward(std::span<const float> x, std::int64_t d, std::span<const float> weight,
                        std::span<const float> bias, std::span<float> y, LayerNormSaved& saved);

// Given dy [rows, d], writes dx [rows, d] and ADDS into grad_weight and grad_bias ([d]).
void layer_norm_backward(std::span<const float> x, std::int64_t d, std::span<const float> weight,
                         const LayerNormSaved& saved, std::span<const float> dy,
                         std::span<float> dx, std::span<float> grad_weight,
                         std::span<float> grad_bias);

}  // namespace moe::apps
