// Scalar activations and their derivatives in fp32, written branch-free on purpose: inlined into
// the loops of activation_kernels.cpp, GCC vectorizes them at the default target (the libm calls
// they replace, erff/expf/tanhf, do not vectorize and cost more than the GEMMs around them).
// Accuracy (tested against float64): absolute error <= 3e-7 max(1, |x|), relative error <= 2e-5
// wherever the value is above 1e-30 (the tails are not flushed to zero early); values below
// ~1e-37 are not resolved. NaN inputs give NaN (x multiplies every result).
// Every choice goes through select(): a plain `c ? a : b` lets GCC move the arithmetic that
// follows into the branches, and under the default -ftrapping-math it then refuses to
// if-convert them, so the loop stays scalar.
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>

#include "experts/activation.hpp"
#include "experts/device/host_device.hpp"

namespace moe::experts {

// c ? a : b as bit masks, which GCC turns into vector compare/and/or.
MOE_HOST_DEVICE inline float select(bool c, float a, float b) {
  const std::uint32_t mask = 0u - static_cast<std::uint32_t>(c);
  return std::bit_cast<float>((std::bit_cast<std::uint32_t>(a) & mask) |
                              (std::bit_cast<std::uint32_t>(b) & ~mask));
}

// e^x with relative error ~1e-7 for x in [-87, 88]; outside, the value at the nearest end
// (so 2^n below stays a normal float and the result is finite).
MOE_HOST_DEVICE inline float exp_approx(float x) {
  x = select(x < -87.0f, -87.0f, x);
  x = select(x > 88.0f, 88.0f, x);
  // Adding 1.5 * 2^23 rounds x*log2(e) to the integer n, which lands in the low mantissa bits.
  constexpr float round_shift = 0x1.8p23f;
  const float shifted = x * 0x1.715476p+0f + round_shift;
  const float n = shifted - round_shift;
  // r = x - n*ln2 in two steps (Cody-Waite): n*ln2_hi is exact, so r keeps full precision.
  const float r = (x - n * 0x1.62e400p-1f) - n * 0x1.7f7d1cp-20f;
  // e^r on |r| <= ln2/2: Taylor to degree 7, truncation error < 1e-8.
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  // Multiply by 2^n by adding n to the exponent field.
  const std::int32_t n_int = std::bit_cast<std::int32_t>(shifted) -
                             std::bit_cast<std::int32_t>(round_shift);
  const std::uint32_t bits =
      std::bit_cast<std::uint32_t>(p) + (static_cast<std::uint32_t>(n_int) << 23);
  return std::bit_cast<float>(bits);
}

// 1 / (1 + e^-x); accurate in relative terms in both tails.
MOE_HOST_DEVICE inline float sigmoid(float x) { return 1.0f / (1.0f + exp_approx(-x)); }

// Φ(-|x|) = erfc(|x|/√2)/2 = t g(t) e^(-x²/2) / 2 with t = 1/(1 + 0.45|x|/√2), where g is a
// degree-9 fit of erfcx(z)(1 + 0.45z) in t (relative error 3e-8 on all of [0, ∞), fitted
// against mpmath). Relative, not absolute: the left tail of gelu stays accurate instead of
// being 1 + erf(...) after cancellation. `gauss` is e^(-x²/2), passed in so that gelu_grad
// shares it with the density.
MOE_HOST_DEVICE inline float normal_cdf_lower(float x, float gauss) {
  const float t = 1.0f / (1.0f + (0.45f * 0x1.6a09e6p-1f) * std::fabs(x));
  float g = -0.0413911562f;
  g = g * t + 0.190688084f;
  g = g * t - 0.300582786f;
  g = g * t + 0.142401206f;
  g = g * t - 0.0223580342f;
  g = g * t + 0.119950448f;
  g = g * t + 0.175252128f;
  g = g * t + 0.228271642f;
  g = g * t + 0.253883163f;
  g = g * t + 0.253885321f;
  return 0.5f * t * g * gauss;
}

// e^(-x²/2), the unnormalized standard normal density.
MOE_HOST_DEVICE inline float gauss(float x) { return exp_approx(-0.5f * x * x); }

// Standard normal CDF Φ(x).
MOE_HOST_DEVICE inline float normal_cdf(float x) {
  const float lower = normal_cdf_lower(x, gauss(x));
  return select(x < 0.0f, lower, 1.0f - lower);
}

// gelu, erf form (PyTorch's default): x Φ(x); derivative Φ(x) + x φ(x).
MOE_HOST_DEVICE inline float gelu(float x) { return x * normal_cdf(x); }
MOE_HOST_DEVICE inline float gelu_grad(float x) {
  const float e = gauss(x);
  const float lower = normal_cdf_lower(x, e);
  return select(x < 0.0f, lower, 1.0f - lower) + x * (0x1.988454p-2f * e);  // 1/√(2π)
}

// gelu, tanh form: x (1 + tanh(u)) / 2 with u = √(2/π)(x + 0.044715x³), i.e. x σ(2u).
MOE_HOST_DEVICE inline float gelu_tanh(float x) {
  const float u = 0x1.988454p-1f * (x + 0.044715f * x * x * x);
  return x * sigmoid(2.0f * u);
}
MOE_HOST_DEVICE inline float gelu_tanh_grad(float x) {
  const float u = 0x1.988454p-1f * (x + 0.044715f * x * x * x);
  const float du = 0x1.988454p-1f * (1.0f + 3.0f * 0.044715f * x * x);
  const float e = exp_approx(-2.0f * u);
  const float s = 1.0f / (1.0f + e);
  // 1 - s computed as e*s: no cancellation when s is close to 1.
  return s + x * s * (e * s) * 2.0f * du;
}

// relu; derivative 0 at 0 (and below), as PyTorch's threshold_backward.
MOE_HOST_DEVICE inline float relu(float x) { return select(x < 0.0f, 0.0f, x); }
MOE_HOST_DEVICE inline float relu_grad(float x) { return select(x <= 0.0f, 0.0f, 1.0f); }

// silu (swish): x σ(x).
MOE_HOST_DEVICE inline float silu(float x) { return x * sigmoid(x); }
MOE_HOST_DEVICE inline float silu_grad(float x) {
  const float e = exp_approx(-x);
  const float s = 1.0f / (1.0f + e);
  return s * (1.0f + x * (e * s));
}

// swiglu's backward at one element: from upstream = dL/d act with act = silu(pre) · gate,
// d_pre = upstream · gate · silu'(pre) and d_gate = upstream · silu(pre); silu and its derivative
// share e^-pre.
MOE_HOST_DEVICE inline void swiglu_grads(float pre, float gate, float upstream, float& d_pre,
                                         float& d_gate) {
  const float e = exp_approx(-pre);
  const float s = 1.0f / (1.0f + e);
  d_gate = upstream * (pre * s);
  d_pre = upstream * gate * (s * (1.0f + pre * (e * s)));
}

// By enum, for tests and scalar callers (the kernels dispatch once per block instead). For
// swiglu this is its silu part, applied to x·w1ᵀ.
MOE_HOST_DEVICE inline float activate(Activation activation, float x) {
  switch (activation) {
    case Activation::gelu: return gelu(x);
    case Activation::gelu_tanh: return gelu_tanh(x);
    case Activation::relu: return relu(x);
    case Activation::silu:
    case Activation::swiglu: return silu(x);
  }
  return x;  // unreachable for a valid enum value
}

MOE_HOST_DEVICE inline float activate_grad(Activation activation, float x) {
  switch (activation) {
    case Activation::gelu: return gelu_grad(x);
    case Activation::gelu_tanh: return gelu_tanh_grad(x);
    case Activation::relu: return relu_grad(x);
    case Activation::silu:
    case Activation::swiglu: return silu_grad(x);
  }
  return 1.0f;  // unreachable for a valid enum value
}

}  // namespace moe::experts
