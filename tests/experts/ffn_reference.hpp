// Float64 reference of the expert math (SPEC.md section 5) for the experts tests: plain triple
// loops and libm, written independently of experts/ so that both can be wrong only differently.
#pragma once

#include <cmath>
#include <cstdint>
#include <numbers>
#include <span>
#include <vector>

#include "experts/expert_shard.hpp"

namespace moe::experts::test {

// Written with erfc and exp rather than 1 + erf / 1 + tanh, so the left tails keep their
// relative accuracy in double too (1 + erf(-6) is already all rounding).
inline double ref_activate(Activation a, double x) {
  const double c = std::sqrt(2.0 / std::numbers::pi);
  switch (a) {
    case Activation::gelu: return 0.5 * x * std::erfc(-x / std::numbers::sqrt2);
    // 0.5 (1 + tanh(u)) = 1 / (1 + e^-2u)
    case Activation::gelu_tanh: return x / (1.0 + std::exp(-2.0 * c * (x + 0.044715 * x * x * x)));
    case Activation::relu: return x > 0.0 ? x : 0.0;
    case Activation::silu:
    case Activation::swiglu: return x / (1.0 + std::exp(-x));
  }
  return NAN;
}

// Analytic derivatives (checked against finite differences in test_activation.cpp).
inline double ref_activate_grad(Activation a, double x) {
  const double c = std::sqrt(2.0 / std::numbers::pi);
  switch (a) {
    case Activation::gelu: {
      const double cdf = 0.5 * std::erfc(-x / std::numbers::sqrt2);
      const double pdf = std::exp(-0.5 * x * x) / std::sqrt(2.0 * std::numbers::pi);
      return cdf + x * pdf;
    }
    case Activation::gelu_tanh: {
      // d/dx of x s(x), s = 1 / (1 + e^-2u): s + x * 2 s (1 - s) u'.
      const double e = std::exp(-2.0 * c * (x + 0.044715 * x * x * x));
      const double s = 1.0 / (1.0 + e);
      return s + x * 2.0 * s * (e * s) * c * (1.0 + 3.0 * 0.044715 * x * x);
    }
    case Activation::relu: return x > 0.0 ? 1.0 : 0.0;
    case Activation::silu:
    case Activation::swiglu: {
      const double s = 1.0 / (1.0 + std::exp(-x));
      return s * (1.0 + x * (1.0 - s));
    }
  }
  return NAN;
}

struct RefForward {
  std::vector<double> y;    // [N, d]
  std::vector<double> pre;  // [N, h] x·w1ᵀ + b1
  std::vector<double> gate; // [N, h] x·w3ᵀ (swiglu)
};

struct RefBackward {
  std::vector<double> dx;  // [N, d]
  // Per parameter kind, laid out as in ExpertShard ([num_experts, ...]); empty when absent.
  std::vector<double> w1, b1, w2, b2, w3;
};

inline double at(std::span<const float> v, std::int64_t i) {
  return static_cast<double>(v[static_cast<std::size_t>(i)]);
}
inline double& at(std::vector<double>& v, std::int64_t i) {
  return v[static_cast<std::size_t>(i)];
}
inline double at(const std::vector<double>& v, std::int64_t i) {
  return v[static_cast<std::size_t>(i)];
}

inline RefForward ref_forward(const ExpertShard& s, std::span<const float> x,
                              std::span<const std::int64_t> offsets) {
  const std::int64_t d = s.shape().d_model, h = s.shape().d_hidden;
  const Activation a = s.shape().activation;
  const bool gated = is_gated(a);
  const std::int64_t n_rows = offsets.back();
  RefForward r;
  r.y.assign(static_cast<std::size_t>(n_rows * d), 0.0);
  r.pre.assign(static_cast<std::size_t>(n_rows * h), 0.0);
  r.gate.assign(static_cast<std::size_t>(n_rows * h), 0.0);
  std::vector<double> act(static_cast<std::size_t>(h));
  for (std::int64_t e = 0; e < s.num_experts(); ++e) {
    const auto w1 = s.w1(e), b1 = s.b1(e), w2 = s.w2(e), b2 = s.b2(e), w3 = s.w3(e);
    for (std::int64_t t = offsets[static_cast<std::size_t>(e)];
         t < offsets[static_cast<std::size_t>(e) + 1]; ++t) {
      for (std::int64_t j = 0; j < h; ++j) {
        double p = gated ? 0.0 : at(b1, j);
        double g = 0.0;
        for (std::int64_t i = 0; i < d; ++i) {
          p += at(x, t * d + i) * at(w1, j * d + i);
          if (gated) g += at(x, t * d + i) * at(w3, j * d + i);
        }
        at(r.pre, t * h + j) = p;
        at(r.gate, t * h + j) = g;
        at(act, j) = gated ? ref_activate(Activation::silu, p) * g : ref_activate(a, p);
      }
      for (std::int64_t i = 0; i < d; ++i) {
        double v = gated ? 0.0 : at(b2, i);
        for (std::int64_t j = 0; j < h; ++j) v += at(act, j) * at(w2, i * h + j);
        at(r.y, t * d + i) = v;
      }
    }
  }
  return r;
}

inline RefBackward ref_backward(const ExpertShard& s, std::span<const float> x,
                                std::span<const std::int64_t> offsets,
                                std::span<const float> dy) {
  const std::int64_t d = s.shape().d_model, h = s.shape().d_hidden, E = s.num_experts();
  const Activation a = s.shape().activation;
  const bool gated = is_gated(a);
  const RefForward f = ref_forward(s, x, offsets);
  const auto size = [](std::int64_t n) { return static_cast<std::size_t>(n); };
  RefBackward r;
  r.dx.assign(size(offsets.back() * d), 0.0);
  r.w1.assign(size(E * h * d), 0.0);
  r.w2.assign(size(E * d * h), 0.0);
  if (gated) {
    r.w3.assign(size(E * h * d), 0.0);
  } else {
    r.b1.assign(size(E * h), 0.0);
    r.b2.assign(size(E * d), 0.0);
  }
  std::vector<double> d_pre(size(h)), d_gate(size(h));
  for (std::int64_t e = 0; e < E; ++e) {
    const auto w1 = s.w1(e), w2 = s.w2(e), w3 = s.w3(e);
    for (std::int64_t t = offsets[size(e)]; t < offsets[size(e) + 1]; ++t) {
      for (std::int64_t j = 0; j < h; ++j) {
        const double p = at(f.pre, t * h + j), g = at(f.gate, t * h + j);
        const double act = gated ? ref_activate(Activation::silu, p) * g : ref_activate(a, p);
        double da = 0.0;
        for (std::int64_t i = 0; i < d; ++i) {
          da += at(dy, t * d + i) * at(w2, i * h + j);
          at(r.w2, (e * d + i) * h + j) += at(dy, t * d + i) * act;
        }
        if (gated) {
          at(d_pre, j) = da * g * ref_activate_grad(Activation::silu, p);
          at(d_gate, j) = da * ref_activate(Activation::silu, p);
        } else {
          at(d_pre, j) = da * ref_activate_grad(a, p);
          at(r.b1, e * h + j) += at(d_pre, j);
        }
      }
      for (std::int64_t i = 0; i < d; ++i) {
        if (!gated) at(r.b2, e * d + i) += at(dy, t * d + i);
        double dxi = 0.0;
        for (std::int64_t j = 0; j < h; ++j) {
          dxi += at(d_pre, j) * at(w1, j * d + i);
          at(r.w1, (e * h + j) * d + i) += at(d_pre, j) * at(x, t * d + i);
          if (gated) {
            dxi += at(d_gate, j) * at(w3, j * d + i);
            at(r.w3, (e * h + j) * d + i) += at(d_gate, j) * at(x, t * d + i);
          }
        }
        at(r.dx, t * d + i) = dxi;
      }
    }
  }
  return r;
}

// ‖a − ref‖ / ‖ref‖ (‖a‖ when ref is all zero, so an exact zero is still required).
inline double rel_error(std::span<const float> a, std::span<const double> ref) {
  if (a.size() != ref.size()) return INFINITY;
  double diff = 0.0, norm = 0.0;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    const double v = static_cast<double>(a[i]);
    diff += (v - ref[i]) * (v - ref[i]);
    norm += ref[i] * ref[i];
  }
  return norm == 0.0 ? std::sqrt(diff) : std::sqrt(diff / norm);
}

}  // namespace moe::experts::test
