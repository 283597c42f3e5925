// The experts' FFN of the device layer on any LayerBackend (runtime/device/layer_backend.hpp):
// each weight matrix is one grouped GEMM over the local experts, the elementwise work (biases,
// activations, their backward, bias gradients) the data-path ops of experts/device/
// activation_ops.hpp. Rows are grouped by expert: rows [offsets[e], offsets[e+1]) belong to local
// expert e (SPEC.md section 5). Parameters are laid out like experts::ExpertShard: each kind
// contiguous over the experts, [L, rows, cols].
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "experts/activation.hpp"
#include "experts/device/activation_ops.hpp"
#include "experts/device/gemm_column_major.hpp"

namespace moe::device {

// The parameters (or their gradients) of `num_experts` experts in the backend's memory.
template <class Backend>
struct FfnParams {
  std::int64_t num_experts = 0, d = 0, h = 0;
  experts::Activation activation = experts::Activation::gelu;
  typename Backend::template Buffer<float> w1, b1, w2, b2, w3;

  bool gated() const { return experts::is_gated(activation); }
  void reserve() {
    w1.reserve(num_experts * h * d);
    w2.reserve(num_experts * d * h);
    if (gated()) {
      w3.reserve(num_experts * h * d);
    } else {
      b1.reserve(num_experts * h);
      b2.reserve(num_experts * d);
    }
  }
};

// Rows [N, h] of the hidden layer: what a forward keeps for its backward (pre, gate for swiglu,
// act), or the backward's scratch (dL/d pre in pre, dL/d gate in gate).
struct FfnRowsView {
  float* pre = nullptr;
  float* gate = nullptr;
  float* act = nullptr;
};

template <class Backend>
struct FfnRows {
  typename Backend::template Buffer<float> pre, gate, act;
  void reserve(std::int64_t rows, std::int64_t h, bool gated) {
    pre.reserve(rows * h);
    act.reserve(rows * h);
    if (gated) gate.reserve(rows * h);
  }
  // The rows from `first` on (width h).
  FfnRowsView at(std::int64_t first, std::int64_t h) const {
    const auto from = [&](float* base) { return base == nullptr ? nullptr : base + first * h; };
    return {from(pre.data()), from(gate.data()), from(act.data())};
  }
};

// The GEMM groups of one call, built on the host and reused (no allocation once grown).
class GemmGroups {
 public:
  // One group per expert with rows: op(A) [m, k], op(B) [k, n] for expert e with n_e rows.
  template <class Fn>
  std::span<const experts::GemmGroup> per_expert(std::span<const std::int64_t> offsets, Fn&& group_of) {
    groups_.clear();
    for (std::size_t e = 0; e + 1 < offsets.size(); ++e) {
      const std::int64_t rows = offsets[e + 1] - offsets[e];
      if (rows > 0) groups_.push_back(group_of(static_cast<std::int64_t>(e), offsets[e], rows));
    }
    return groups_;
  }

 private:
  std::vector<experts::GemmGroup> groups_;
};

// y [N, d] = f_e(x) for every expert's rows; `saved` keeps pre, gate and act ([N, h]).
template <class Backend>
void ffn_forward(Backend& backend, GemmGroups& groups, const FfnParams<Backend>& p, const float* x,
                 std::span<const std::int64_t> offsets, float* y, FfnRowsView saved) {
  using experts::Op;
  const std::int64_t d = p.d, h = p.h, rows = offsets.back();
  if (rows == 0) return;
  float* pre = saved.pre;
  float* act = saved.act;
  const auto first_layer = [&](const float* w, float* out) {
    backend.gemm(Op::none, Op::transpose, 1.0f, 0.0f,
                 groups.per_expert(offsets, [&](std::int64_t e, std::int64_t at, std::int64_t n) {
                   return experts::GemmGroup{.a = x + at * d, .lda = d, .b = w + e * h * d, .ldb = d,
                                             .c = out + at * h, .ldc = h, .m = n, .n = h, .k = d};
                 }));
  };
  first_layer(p.w1.data(), pre);
  if (p.gated()) {
    first_layer(p.w3.data(), saved.gate);
    backend.launch(rows * h, SwigluForwardOp{.pre = pre, .gate = saved.gate, .act = act});
  } else {
    for (std::size_t e = 0; e + 1 < offsets.size(); ++e) {
      const std::int64_t at = offsets[e], n = offsets[e + 1] - at;
      backend.launch(n * h, BiasActivationForwardOp{.activation = p.activation, .cols = h,
                                                    .bias = p.b1.data() + static_cast<std::int64_t>(e) * h,
                                                    .pre = pre + at * h, .act = act + at * h});
    }
  }
  backend.gemm(Op::none, Op::transpose, 1.0f, 0.0f,
               groups.per_expert(offsets, [&](std::int64_t e, std::int64_t at, std::int64_t n) {
                 return experts::GemmGroup{.a = act + at * h, .lda = h, .b = p.w2.data() + e * d * h,
                                           .ldb = h, .c = y + at * d, .ldc = d, .m = n, .n = d, .k = h};
               }));
  if (p.gated()) return;
  for (std::size_t e = 0; e + 1 < offsets.size(); ++e) {
    const std::int64_t at = offsets[e], n = offsets[e + 1] - at;
    backend.launch(n * d, AddRowBiasOp{.cols = d, .bias = p.b2.data() + static_cast<std::int64_t>(e) * d,
                                       .y = y + at * d});
  }
}

// Given dy [N, d]: dx [N, d], and every parameter gradient ADDED into `grads`. `saved` is what
// ffn_forward kept for these rows; `scratch` ([N, h] pre and gate) is overwritten.
template <class Backend>
void ffn_backward(Backend& backend, GemmGroups& groups, const FfnParams<Backend>& p, const float* x,
                  std::span<const std::int64_t> offsets, FfnRowsView saved, const float* dy,
                  float* dx, FfnParams<Backend>& grads, FfnRowsView scratch) {
  using experts::Op;
  const std::int64_t d = p.d, h = p.h, rows = offsets.back();
  if (rows == 0) return;
  float* grad_hidden = scratch.pre;
  const auto each = [&](auto&& group_of) { return groups.per_expert(offsets, group_of); };
  // Second layer: dA = dY·W2, dW2 += dYᵀ·A, db2 += Σ dY.
  backend.gemm(Op::none, Op::none, 1.0f, 0.0f, each([&](std::int64_t e, std::int64_t at, std::int64_t n) {
    return experts::GemmGroup{.a = dy + at * d, .lda = d, .b = p.w2.data() + e * d * h, .ldb = h,
                              .c = grad_hidden + at * h, .ldc = h, .m = n, .n = h, .k = d};
  }));
  backend.gemm(Op::transpose, Op::none, 1.0f, 1.0f, each([&](std::int64_t e, std::int64_t at, std::int64_t n) {
    return experts::GemmGroup{.a = dy + at * d, .lda = d, .b = saved.act + at * h, .ldb = h,
                              .c = grads.w2.data() + e * d * h, .ldc = h, .m = d, .n = h, .k = n};
  }));
  // Through the activation (dA becomes dH in place), then the first layer:
  // dW1 += dHᵀ·X, dX = dH·W1 (+ dG·W3 and dW3 += dGᵀ·X for swiglu).
  const auto input_grads = [&](const float* g, float* w_grad, const float* w, float beta) {
    backend.gemm(Op::transpose, Op::none, 1.0f, 1.0f, each([&](std::int64_t e, std::int64_t at, std::int64_t n) {
      return experts::GemmGroup{.a = g + at * h, .lda = h, .b = x + at * d, .ldb = d,
                                .c = w_grad + e * h * d, .ldc = d, .m = h, .n = d, .k = n};
    }));
    backend.gemm(Op::none, Op::none, 1.0f, beta, each([&](std::int64_t e, std::int64_t at, std::int64_t n) {
      return experts::GemmGroup{.a = g + at * h, .lda = h, .b = w + e * h * d, .ldb = d,
                                .c = dx + at * d, .ldc = d, .m = n, .n = d, .k = h};
    }));
  };
  if (p.gated()) {
    float* grad_gate = scratch.gate;
    backend.launch(rows * h, SwigluBackwardOp{.pre = saved.pre, .gate = saved.gate,
                                              .grad = grad_hidden, .grad_gate = grad_gate});
    input_grads(grad_gate, grads.w3.data(), p.w3.data(), 0.0f);
    input_grads(grad_hidden, grads.w1.data(), p.w1.data(), 1.0f);
    return;
  }
  backend.launch(rows * h, ActivationBackwardOp{.activation = p.activation, .pre = saved.pre,
                                                .grad = grad_hidden});
  for (std::size_t e = 0; e + 1 < offsets.size(); ++e) {
    const std::int64_t at = offsets[e], n = offsets[e + 1] - at, i = static_cast<std::int64_t>(e);
    if (n == 0) continue;
    backend.launch(d, ColumnSumOp{.rows = n, .cols = d, .in = dy + at * d, .sums = grads.b2.data() + i * d});
    backend.launch(h, ColumnSumOp{.rows = n, .cols = h, .in = grad_hidden + at * h, .sums = grads.b1.data() + i * h});
  }
  input_grads(grad_hidden, grads.w1.data(), p.w1.data(), 0.0f);
}

}  // namespace moe::device
