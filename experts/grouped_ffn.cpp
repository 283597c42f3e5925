#include "experts/grouped_ffn.hpp"

#include <algorithm>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "experts/activation_kernels.hpp"
#include "experts/ffn_work.hpp"
#include "experts/gemm.hpp"

namespace moe::experts {
namespace {

std::size_t to_size(std::int64_t n) { return static_cast<std::size_t>(n); }

// Grow only: a smaller batch reuses the larger buffer, so steady state allocates nothing.
template <typename T>
void grow(std::vector<T>& v, std::size_t n) {
  if (v.size() < n) v.resize(n);
}

[[noreturn]] void fail(const char* function, const std::string& what) {
  throw std::invalid_argument(std::string(function) + ": " + what);
}

// Checks offsets against the shard and returns N, the number of rows.
std::int64_t checked_rows(const char* function, const ExpertShard& shard,
                          std::span<const std::int64_t> offsets) {
  if (!(static_cast<std::int64_t>(offsets.size()) == shard.num_experts() + 1)) {
    fail(function, "offsets has " + std::to_string(offsets.size()) + " entries, " +
              std::to_string(shard.num_experts() + 1) + " expected (local experts + 1)");
  }
  if (!(offsets[0] == 0)) {
    fail(function, "offsets[0] is " + std::to_string(offsets[0]) + ", not 0");
  }
  for (std::size_t e = 1; e < offsets.size(); ++e) {
    if (!(offsets[e] >= offsets[e - 1])) {
      fail(function, "offsets decrease at local expert " + std::to_string(e - 1));
    }
  }
  return offsets.back();
}

void require_size(const char* function, const char* name, std::size_t size, std::size_t want) {
  if (!(size == want)) {
    fail(function, std::string(name) + " has " + std::to_string(size) + " elements, " +
              std::to_string(want) + " expected");
  }
}

// Row block [first, first + rows) of a row-major matrix with `cols` columns.
template <typename T>
std::span<T> rows_of(std::span<T> m, std::int64_t first, std::int64_t rows, std::int64_t cols) {
  return m.subspan(to_size(first * cols), to_size(rows * cols));
}

// The weights the GEMMs of one precision read: the fp32 masters or the shard's bf16 copies.
template <typename T>
struct Weights {
  const ExpertShard& shard;
  std::span<const T> w1(std::int64_t e) const {
    if constexpr (std::is_same_v<T, bf16>) return shard.w1_bf16(e); else return shard.w1(e);
  }
  std::span<const T> w2(std::int64_t e) const {
    if constexpr (std::is_same_v<T, bf16>) return shard.w2_bf16(e); else return shard.w2(e);
  }
  std::span<const T> w3(std::int64_t e) const {
    if constexpr (std::is_same_v<T, bf16>) return shard.w3_bf16(e); else return shard.w3(e);
  }
};

// fp32 values as a GEMM operand of precision T: themselves for fp32; for bf16 their copy in
// `storage` (of the same size), converted now when `convert_now`.
template <typename T>
std::span<const T> operand(std::span<const float> values, std::span<bf16> storage,
                           bool convert_now) {
  if constexpr (std::is_same_v<T, bf16>) {
    if (convert_now) convert(values, storage);
    return storage;
  } else {
    (void)storage;
    (void)convert_now;
    return values;
  }
}

std::span<const float> bias_if(bool fused, std::span<const float> bias) {
  return fused ? bias : std::span<const float>{};
}

template <typename T>
void forward_rows(const ExpertShard& shard, std::span<const T> x,
                  std::span<const std::int64_t> offsets, std::span<float> y,
                  FfnActivations& saved, const FfnWork& work) {
  const Weights<T> weights{shard};
  const std::int64_t d = shard.shape().d_model;
  const std::int64_t h = shard.shape().d_hidden;
  const Activation activation = shard.shape().activation;
  const bool gated = is_gated(activation);
  for (std::int64_t e = 0; e < shard.num_experts(); ++e) {
    const std::int64_t first = offsets[to_size(e)];
    const std::int64_t n = offsets[to_size(e) + 1] - first;
    if (n == 0) continue;
    const auto xe = rows_of(x, first, n, d);
    const auto ye = rows_of(y, first, n, d);
    const auto pre = rows_of(std::span(saved.hidden_pre), first, n, h);
    const auto act = rows_of(std::span(saved.hidden_act), first, n, h);
    const bool fuse = work.fuse_bias && !gated;  // swiglu has no biases

    gemm(Op::none, Op::transpose, n, h, d, 1.0f, xe, d, weights.w1(e), d, 0.0f, pre, h,
         {.bias = bias_if(fuse, shard.b1(e)), .activation = {}});
    if (gated) {
      const auto gate = rows_of(std::span(saved.hidden_gate), first, n, h);
      gemm(Op::none, Op::transpose, n, h, d, 1.0f, xe, d, weights.w3(e), d, 0.0f, gate, h);
      if (work.elementwise) swiglu_forward(pre, gate, act);
    } else if (work.elementwise) {
      bias_activation_forward(activation, n, h, bias_if(!fuse, shard.b1(e)), pre, act);
    }
    const auto act_e = operand<T>(act, rows_of(std::span(saved.act_bf16), first, n, h),
                                  work.elementwise);
    gemm(Op::none, Op::transpose, n, d, h, 1.0f, act_e, h, weights.w2(e), h, 0.0f, ye, d,
         {.bias = bias_if(fuse, shard.b2(e)), .activation = {}});
    if (!gated && !fuse && work.elementwise) add_row_bias(n, d, shard.b2(e), ye);
  }
}

// Backward's per-expert intermediates (dL/d hidden, and dL/d gate for swiglu), and for bf16 the
// converted dy and intermediates. Not part of FfnActivations because that is const in backward
// and one per micro-batch, while this is only needed during the call; one per thread so
// concurrent backward calls do not share it.
struct BackwardScratch {
  std::vector<float> grad_hidden;
  std::vector<float> grad_gate;
  std::vector<bf16> dy_bf16, grad_hidden_bf16, grad_gate_bf16;
};

BackwardScratch& backward_scratch() {
  thread_local BackwardScratch scratch;
  return scratch;
}

template <typename T>
void backward_rows(const ExpertShard& shard, std::span<const T> x, std::span<const T> dy_op,
                   std::span<const float> dy, std::span<const std::int64_t> offsets,
                   const FfnActivations& saved, std::span<const T> act_all, std::span<float> dx,
                   ExpertShard& grads, const FfnWork& work) {
  const Weights<T> weights{shard};
  const std::int64_t d = shard.shape().d_model;
  const std::int64_t h = shard.shape().d_hidden;
  const Activation activation = shard.shape().activation;
  const bool gated = is_gated(activation);
  BackwardScratch& scratch = backward_scratch();
  const std::span<const float> hidden_pre(saved.hidden_pre);
  const std::span<const float> hidden_gate(saved.hidden_gate);
  for (std::int64_t e = 0; e < shard.num_experts(); ++e) {
    const std::int64_t first = offsets[to_size(e)];
    const std::int64_t n = offsets[to_size(e) + 1] - first;
    if (n == 0) continue;
    const auto xe = rows_of(x, first, n, d);
    const auto dye = rows_of(dy_op, first, n, d);
    const auto dxe = rows_of(dx, first, n, d);
    const auto pre = rows_of(hidden_pre, first, n, h);
    const auto act = rows_of(act_all, first, n, h);
    const auto grad_hidden = std::span(scratch.grad_hidden).first(to_size(n * h));

    // Second layer: dA = dY·W2, dW2 += dYᵀ·A, db2 += Σ dY.
    gemm(Op::none, Op::none, n, h, d, 1.0f, dye, d, weights.w2(e), h, 0.0f, grad_hidden, h);
    gemm(Op::transpose, Op::none, d, h, n, 1.0f, dye, d, act, h, 1.0f, grads.w2(e), h);
    if (!gated && work.elementwise) add_column_sums(n, d, rows_of(dy, first, n, d), grads.b2(e));

    // Through the activation (dA becomes dH in place), then the first layer:
    // dW1 += dHᵀ·X, dX = dH·W1 (+ dG·W3 and dW3 += dGᵀ·X for swiglu).
    if (gated) {
      const auto gate = rows_of(hidden_gate, first, n, h);
      const auto grad_gate = std::span(scratch.grad_gate).first(to_size(n * h));
      if (work.elementwise) swiglu_backward(pre, gate, grad_hidden, grad_gate);
      const auto gg = operand<T>(
          grad_gate, std::span(scratch.grad_gate_bf16).first(grad_gate.size()), work.elementwise);
      gemm(Op::transpose, Op::none, h, d, n, 1.0f, gg, h, xe, d, 1.0f, grads.w3(e), d);
      gemm(Op::none, Op::none, n, d, h, 1.0f, gg, h, weights.w3(e), d, 0.0f, dxe, d);
    } else if (work.elementwise) {
      activation_backward(activation, n, h, pre, grad_hidden, grads.b1(e));
    }
    const auto gh = operand<T>(grad_hidden,
                               std::span(scratch.grad_hidden_bf16).first(grad_hidden.size()),
                               work.elementwise);
    gemm(Op::none, Op::none, n, d, h, 1.0f, gh, h, weights.w1(e), d, gated ? 1.0f : 0.0f, dxe, d);
    gemm(Op::transpose, Op::none, h, d, n, 1.0f, gh, h, xe, d, 1.0f, grads.w1(e), d);
  }
}

}  // namespace

void reserve(FfnActivations& saved, std::int64_t rows, const ExpertShape& shape, Compute compute) {
  const std::size_t hidden = to_size(rows * shape.d_hidden);
  grow(saved.hidden_pre, hidden);
  grow(saved.hidden_act, hidden);
  if (is_gated(shape.activation)) grow(saved.hidden_gate, hidden);
  if (compute == Compute::bf16) {
    grow(saved.input_bf16, to_size(rows * shape.d_model));
    grow(saved.act_bf16, hidden);
  }
}

void ffn_forward(const ExpertShard& shard, std::span<const float> x,
                 std::span<const std::int64_t> offsets, std::span<float> y, FfnActivations& saved,
                 Compute compute) {
  ffn_forward(shard, x, offsets, y, saved, compute, FfnWork{});
}

void ffn_forward(const ExpertShard& shard, std::span<const float> x,
                 std::span<const std::int64_t> offsets, std::span<float> y, FfnActivations& saved,
                 Compute compute, const FfnWork& work) {
  constexpr const char* fn = "ffn_forward";
  const std::int64_t num_rows = checked_rows(fn, shard, offsets);
  const std::int64_t d = shard.shape().d_model;
  require_size(fn, "x", x.size(), to_size(num_rows * d));
  require_size(fn, "y", y.size(), to_size(num_rows * d));
  reserve(saved, num_rows, shard.shape(), compute);
  saved.compute = compute;
  if (compute == Compute::bf16) {
    shard.refresh_bf16();
    const auto xb = std::span(saved.input_bf16).first(x.size());
    convert(x, xb);
    forward_rows<bf16>(shard, xb, offsets, y, saved, work);
  } else {
    forward_rows<float>(shard, x, offsets, y, saved, work);
  }
}

void ffn_backward(const ExpertShard& shard, std::span<const float> x,
                  std::span<const std::int64_t> offsets, const FfnActivations& saved,
                  std::span<const float> dy, std::span<float> dx, ExpertShard& grads) {
  ffn_backward(shard, x, offsets, saved, dy, dx, grads, FfnWork{});
}

void ffn_backward(const ExpertShard& shard, std::span<const float> x,
                  std::span<const std::int64_t> offsets, const FfnActivations& saved,
                  std::span<const float> dy, std::span<float> dx, ExpertShard& grads,
                  const FfnWork& work) {
  constexpr const char* fn = "ffn_backward";
  const std::int64_t num_rows = checked_rows(fn, shard, offsets);
  const std::int64_t d = shard.shape().d_model;
  const std::int64_t h = shard.shape().d_hidden;
  const Activation activation = shard.shape().activation;
  const bool gated = is_gated(activation);
  const bool bf16_mode = saved.compute == Compute::bf16;
  require_size(fn, "x", x.size(), to_size(num_rows * d));
  require_size(fn, "dy", dy.size(), to_size(num_rows * d));
  require_size(fn, "dx", dx.size(), to_size(num_rows * d));
  if (!(grads.num_experts() == shard.num_experts() && grads.shape().d_model == d &&
        grads.shape().d_hidden == h && grads.shape().activation == activation)) {
    fail(fn, "grads does not have the shard's shape");
  }
  const std::size_t hidden_size = to_size(num_rows * h);
  if (!(saved.hidden_pre.size() >= hidden_size && saved.hidden_act.size() >= hidden_size &&
        (!gated || saved.hidden_gate.size() >= hidden_size) &&
        (!bf16_mode || (saved.act_bf16.size() >= hidden_size &&
                        saved.input_bf16.size() >= x.size())))) {
    fail(fn, "saved activations are smaller than this batch (not from its forward?)");
  }

  std::int64_t max_rows = 0;
  for (std::size_t e = 0; e + 1 < offsets.size(); ++e) {
    max_rows = std::max(max_rows, offsets[e + 1] - offsets[e]);
  }
  BackwardScratch& scratch = backward_scratch();
  grow(scratch.grad_hidden, to_size(max_rows * h));
  if (gated) grow(scratch.grad_gate, to_size(max_rows * h));
  if (bf16_mode) {
    shard.refresh_bf16();
    grow(scratch.grad_hidden_bf16, to_size(max_rows * h));
    if (gated) grow(scratch.grad_gate_bf16, to_size(max_rows * h));
    grow(scratch.dy_bf16, dy.size());
    const auto dyb = std::span(scratch.dy_bf16).first(dy.size());
    convert(dy, dyb);
    backward_rows<bf16>(shard, std::span<const bf16>(saved.input_bf16).first(x.size()), dyb, dy,
                        offsets, saved, std::span<const bf16>(saved.act_bf16), dx, grads, work);
  } else {
    backward_rows<float>(shard, x, dy, dy, offsets, saved, std::span<const float>(saved.hidden_act),
                         dx, grads, work);
  }
}

}  // namespace moe::experts
