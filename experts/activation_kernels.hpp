// The elementwise work around the expert GEMMs, on row-major [rows, cols] blocks: bias, the
// activation and its derivative, bias gradients. Each is one pass over memory, and the
// activation is chosen once per call so the inner loop vectorizes.
#pragma once

#include <cstdint>
#include <span>

#include "experts/activation.hpp"

namespace moe::experts {

// After pre = x·w1ᵀ: pre[i, j] += bias[j] (skipped when bias is empty), act = f(pre).
// For swiglu use swiglu_forward instead.
void bias_activation_forward(Activation activation, std::int64_t rows, std::int64_t cols,
                             std::span<const float> bias, std::span<float> pre,
                             std::span<float> act);

// act = silu(pre) ⊙ gate, all of the same size.
void swiglu_forward(std::span<const float> pre, std::span<const float> gate,
                    std::span<float> act);

// grad holds dL/d act on entry and dL/d pre on return (grad ⊙ f'(pre)); bias_grad[j] +=
// Σ_i of the result (skipped when bias_grad is empty). For swiglu use swiglu_backward.
void activation_backward(Activation activation, std::int64_t rows, std::int64_t cols,
                         std::span<const float> pre, std::span<float> grad,
                         std::span<float> bias_grad);

// grad holds dL/d act on entry; on return grad = dL/d pre (grad ⊙ gate ⊙ silu'(pre)) and
// grad_gate = dL/d gate (grad ⊙ silu(pre)).
void swiglu_backward(std::span<const float> pre, std::span<const float> gate,
                     std::span<float> grad, std::span<float> grad_gate);

// out[i, j] += bias[j].
void add_row_bias(std::int64_t rows, std::int64_t cols, std::span<const float> bias,
                  std::span<float> out);

// sums[j] += Σ_i in[i, j].
void add_column_sums(std::int64_t rows, std::int64_t cols, std::span<const float> in,
                     std::span<float> sums);

}  // namespace moe::experts
