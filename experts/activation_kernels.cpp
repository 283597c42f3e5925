#include "experts/activation_kernels.hpp"

#include <cstddef>

#include "experts/activation_math.hpp"

// Each kernel is compiled three times, for the default x86-64 target, x86-64-v3 (AVX2 with FMA:
// CPUs, or virtual machines, that do not expose AVX-512) and x86-64-v4 (AVX-512 with FMA), and
// the dynamic loader picks one for this CPU (GCC's target_clones, an ifunc). The default target
// has only 4-wide SSE2 without FMA, where the activation math is compute-bound and cost ~10% of
// the expert GEMMs; the AVX-512 version is ~4x faster (measured on the standard shape). oneDNN dispatches its GEMMs the same way. The row loops below are
// always_inline so they are compiled inside, and for, each clone.
// Not under ThreadSanitizer: the loader runs an ifunc's resolver while relocating the program,
// before TSan's runtime is set up, and the instrumented resolver crashes there (SIGSEGV at start).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__SANITIZE_THREAD__)
#define MOE_VECTOR_CLONES [[gnu::target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")]]
#else
#define MOE_VECTOR_CLONES
#endif

namespace moe::experts {
namespace {

// One loop body per activation: the functor is a template argument, so it inlines and the loop
// over a row vectorizes (see activation_math.hpp).
template <typename F>
[[gnu::always_inline]] inline void forward_rows(std::int64_t rows, std::int64_t cols, const float* bias, float* pre,
                  float* act, F f) {
  const auto n = static_cast<std::size_t>(cols);
  for (std::int64_t i = 0; i < rows; ++i) {
    float* p = pre + static_cast<std::size_t>(i) * n;
    float* a = act + static_cast<std::size_t>(i) * n;
    if (bias != nullptr) {
      for (std::size_t j = 0; j < n; ++j) {
        const float v = p[j] + bias[j];
        p[j] = v;
        a[j] = f(v);
      }
    } else {
      for (std::size_t j = 0; j < n; ++j) a[j] = f(p[j]);
    }
  }
}

template <typename F>
[[gnu::always_inline]] inline void backward_rows(std::int64_t rows, std::int64_t cols, const float* pre, float* grad,
                   float* bias_grad, F f_grad) {
  const auto n = static_cast<std::size_t>(cols);
  for (std::int64_t i = 0; i < rows; ++i) {
    const float* p = pre + static_cast<std::size_t>(i) * n;
    float* g = grad + static_cast<std::size_t>(i) * n;
    if (bias_grad != nullptr) {
      for (std::size_t j = 0; j < n; ++j) {
        const float v = g[j] * f_grad(p[j]);
        g[j] = v;
        bias_grad[j] += v;
      }
    } else {
      for (std::size_t j = 0; j < n; ++j) g[j] *= f_grad(p[j]);
    }
  }
}

const float* data_or_null(std::span<const float> s) { return s.empty() ? nullptr : s.data(); }
float* data_or_null(std::span<float> s) { return s.empty() ? nullptr : s.data(); }

}  // namespace

MOE_VECTOR_CLONES void bias_activation_forward(Activation activation, std::int64_t rows, std::int64_t cols,
                             std::span<const float> bias, std::span<float> pre,
                             std::span<float> act) {
  const float* b = data_or_null(bias);
  switch (activation) {
    case Activation::gelu:
      forward_rows(rows, cols, b, pre.data(), act.data(), [](float x) { return gelu(x); });
      return;
    case Activation::gelu_tanh:
      forward_rows(rows, cols, b, pre.data(), act.data(), [](float x) { return gelu_tanh(x); });
      return;
    case Activation::relu:
      forward_rows(rows, cols, b, pre.data(), act.data(), [](float x) { return relu(x); });
      return;
    case Activation::silu:
    case Activation::swiglu:
      forward_rows(rows, cols, b, pre.data(), act.data(), [](float x) { return silu(x); });
      return;
  }
}

MOE_VECTOR_CLONES void swiglu_forward(std::span<const float> pre, std::span<const float> gate,
                    std::span<float> act) {
  const float* p = pre.data();
  const float* g = gate.data();
  float* a = act.data();
  for (std::size_t i = 0; i < act.size(); ++i) a[i] = silu(p[i]) * g[i];
}

MOE_VECTOR_CLONES void activation_backward(Activation activation, std::int64_t rows, std::int64_t cols,
                         std::span<const float> pre, std::span<float> grad,
                         std::span<float> bias_grad) {
  float* bg = data_or_null(bias_grad);
  switch (activation) {
    case Activation::gelu:
      backward_rows(rows, cols, pre.data(), grad.data(), bg, [](float x) { return gelu_grad(x); });
      return;
    case Activation::gelu_tanh:
      backward_rows(rows, cols, pre.data(), grad.data(), bg,
                    [](float x) { return gelu_tanh_grad(x); });
      return;
    case Activation::relu:
      backward_rows(rows, cols, pre.data(), grad.data(), bg, [](float x) { return relu_grad(x); });
      return;
    case Activation::silu:
    case Activation::swiglu:
      backward_rows(rows, cols, pre.data(), grad.data(), bg, [](float x) { return silu_grad(x); });
      return;
  }
}

MOE_VECTOR_CLONES void swiglu_backward(std::span<const float> pre, std::span<const float> gate,
                     std::span<float> grad, std::span<float> grad_gate) {
  const float* p = pre.data();
  const float* gt = gate.data();
  float* g = grad.data();
  float* gg = grad_gate.data();
  for (std::size_t i = 0; i < grad.size(); ++i) swiglu_grads(p[i], gt[i], g[i], g[i], gg[i]);
}

MOE_VECTOR_CLONES void add_row_bias(std::int64_t rows, std::int64_t cols, std::span<const float> bias,
                  std::span<float> out) {
  const auto n = static_cast<std::size_t>(cols);
  const float* b = bias.data();
  for (std::int64_t i = 0; i < rows; ++i) {
    float* o = out.data() + static_cast<std::size_t>(i) * n;
    for (std::size_t j = 0; j < n; ++j) o[j] += b[j];
  }
}

MOE_VECTOR_CLONES void add_column_sums(std::int64_t rows, std::int64_t cols, std::span<const float> in,
                     std::span<float> sums) {
  const auto n = static_cast<std::size_t>(cols);
  float* s = sums.data();
  for (std::int64_t i = 0; i < rows; ++i) {
    const float* r = in.data() + static_cast<std::size_t>(i) * n;
    for (std::size_t j = 0; j < n; ++j) s[j] += r[j];
  }
}

}  // namespace moe::experts
