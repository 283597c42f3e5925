#include "experts/grouped_ffn.hpp"

#include <algorithm>
#include <stdexcept>
#include <string>

#include "experts/activation_kernels.hpp"
#include "experts/gemm.hpp"

namespace moe::experts {
namespace {

std::size_t to_size(std::int64_t n) { return static_cast<std::size_t>(n); }

// Grow only: a smaller batch reuses the larger buffer, so steady state allocates nothing.
void grow(std::vector<float>& v, std::size_t n) {
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

// Backward's per-expert intermediates (dL/d hidden, and dL/d gate for swiglu). Not part of
// FfnActivations because that is const in backward and one per micro-batch, while this is only
// needed during the call; one per thread so concurrent backward calls do not share it.
struct BackwardScratch {
  std::vector<float> grad_hidden;
  std::vector<float> grad_gate;
};

BackwardScratch& backward_scratch() {
  thread_local BackwardScratch scratch;
  return scratch;
}

}  // namespace

void ffn_forward(const ExpertShard& shard, std::span<const float> x,
                 std::span<const std::int64_t> offsets, std::span<float> y,
                 FfnActivations& saved) {
  constexpr const char* fn = "ffn_forward";
  const std::int64_t num_rows = checked_rows(fn, shard, offsets);
  const std::int64_t d = shard.shape().d_model;
  const std::int64_t h = shard.shape().d_hidden;
  const Activation activation = shard.shape().activation;
  const bool gated = is_gated(activation);
  require_size(fn, "x", x.size(), to_size(num_rows * d));
  require_size(fn, "y", y.size(), to_size(num_rows * d));

  grow(saved.hidden_pre, to_size(num_rows * h));
  grow(saved.hidden_act, to_size(num_rows * h));
  if (gated) grow(saved.hidden_gate, to_size(num_rows * h));

  for (std::int64_t e = 0; e < shard.num_experts(); ++e) {
    const std::int64_t first = offsets[to_size(e)];
    const std::int64_t n = offsets[to_size(e) + 1] - first;
    if (n == 0) continue;
    const auto xe = rows_of(x, first, n, d);
    const auto ye = rows_of(y, first, n, d);
    const auto pre = rows_of(std::span(saved.hidden_pre), first, n, h);
    const auto act = rows_of(std::span(saved.hidden_act), first, n, h);

    gemm(Op::none, Op::transpose, n, h, d, 1.0f, xe, d, shard.w1(e), d, 0.0f, pre, h);
    if (gated) {
      const auto gate = rows_of(std::span(saved.hidden_gate), first, n, h);
      gemm(Op::none, Op::transpose, n, h, d, 1.0f, xe, d, shard.w3(e), d, 0.0f, gate, h);
      swiglu_forward(pre, gate, act);
    } else {
      bias_activation_forward(activation, n, h, shard.b1(e), pre, act);
    }
    gemm(Op::none, Op::transpose, n, d, h, 1.0f, act, h, shard.w2(e), h, 0.0f, ye, d);
    if (!gated) add_row_bias(n, d, shard.b2(e), ye);
  }
}

void ffn_backward(const ExpertShard& shard, std::span<const float> x,
                  std::span<const std::int64_t> offsets, const FfnActivations& saved,
                  std::span<const float> dy, std::span<float> dx, ExpertShard& grads) {
  constexpr const char* fn = "ffn_backward";
  const std::int64_t num_rows = checked_rows(fn, shard, offsets);
  const std::int64_t d = shard.shape().d_model;
  const std::int64_t h = shard.shape().d_hidden;
  const Activation activation = shard.shape().activation;
  const bool gated = is_gated(activation);
  require_size(fn, "x", x.size(), to_size(num_rows * d));
  require_size(fn, "dy", dy.size(), to_size(num_rows * d));
  require_size(fn, "dx", dx.size(), to_size(num_rows * d));
  if (!(grads.num_experts() == shard.num_experts() && grads.shape().d_model == d &&
              grads.shape().d_hidden == h && grads.shape().activation == activation)) {
    fail(fn, "grads does not have the shard's shape");
  }
  const std::size_t hidden_size = to_size(num_rows * h);
  if (!(saved.hidden_pre.size() >= hidden_size && saved.hidden_act.size() >= hidden_size &&
              (!gated || saved.hidden_gate.size() >= hidden_size))) {
    fail(fn, "saved activations are smaller than this batch (not from its forward?)");
  }

  std::int64_t max_rows = 0;
  for (std::size_t e = 0; e + 1 < offsets.size(); ++e) {
    max_rows = std::max(max_rows, offsets[e + 1] - offsets[e]);
  }
  BackwardScratch& scratch = backward_scratch();
  grow(scratch.grad_hidden, to_size(max_rows * h));
  if (gated) grow(scratch.grad_gate, to_size(max_rows * h));

  const std::span<const float> hidden_pre(saved.hidden_pre);
  const std::span<const float> hidden_act(saved.hidden_act);
  const std::span<const float> hidden_gate(saved.hidden_gate);
  for (std::int64_t e = 0; e < shard.num_experts(); ++e) {
    const std::int64_t first = offsets[to_size(e)];
    const std::int64_t n = offsets[to_size(e) + 1] - first;
    if (n == 0) continue;
    const auto xe = rows_of(x, first, n, d);
    const auto dye = rows_of(dy, first, n, d);
    const auto dxe = rows_of(dx, first, n, d);
    const auto pre = rows_of(hidden_pre, first, n, h);
    const auto act = rows_of(hidden_act, first, n, h);
    const auto grad_hidden = std::span(scratch.grad_hidden).first(to_size(n * h));

    // Second layer: dA = dY·W2, dW2 += dYᵀ·A, db2 += Σ dY.
    gemm(Op::none, Op::none, n, h, d, 1.0f, dye, d, shard.w2(e), h, 0.0f, grad_hidden, h);
    gemm(Op::transpose, Op::none, d, h, n, 1.0f, dye, d, act, h, 1.0f, grads.w2(e), h);
    if (!gated) add_column_sums(n, d, dye, grads.b2(e));

    // Through the activation (dA becomes dH in place), then the first layer:
    // dW1 += dHᵀ·X, dX = dH·W1 (+ dG·W3 and dW3 += dGᵀ·X for swiglu).
    if (gated) {
      const auto gate = rows_of(hidden_gate, first, n, h);
      const auto grad_gate = std::span(scratch.grad_gate).first(to_size(n * h));
      swiglu_backward(pre, gate, grad_hidden, grad_gate);
      gemm(Op::transpose, Op::none, h, d, n, 1.0f, grad_gate, h, xe, d, 1.0f, grads.w3(e), d);
      gemm(Op::none, Op::none, n, d, h, 1.0f, grad_gate, h, shard.w3(e), d, 0.0f, dxe, d);
      gemm(Op::none, Op::none, n, d, h, 1.0f, grad_hidden, h, shard.w1(e), d, 1.0f, dxe, d);
    } else {
      activation_backward(activation, n, h, pre, grad_hidden, grads.b1(e));
      gemm(Op::none, Op::none, n, d, h, 1.0f, grad_hidden, h, shard.w1(e), d, 0.0f, dxe, d);
    }
    gemm(Op::transpose, Op::none, h, d, n, 1.0f, grad_hidden, h, xe, d, 1.0f, grads.w1(e), d);
  }
}

}  // namespace moe::experts
