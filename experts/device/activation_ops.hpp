// The elementwise work around the expert GEMMs as data-path ops, one element per index of a
// row-major [rows, cols] block: bias and activation, their backward, swiglu, and the bias
// gradient's column sums. The scalar math is experts/activation_math.hpp, the same functions the
// host kernels (experts/activation_kernels.cpp) vectorize; the host launcher runs these ops in the
// host tests, the CUDA launcher on a GPU.
#pragma once

#include <cstdint>

#include "experts/activation.hpp"
#include "experts/activation_math.hpp"
#include "experts/device/host_device.hpp"

namespace moe::device {

// pre += bias (by column; none when bias is null), act = f(pre). For swiglu see SwigluForwardOp.
struct BiasActivationForwardOp {
  experts::Activation activation;
  std::int64_t cols;
  const float* bias;  // [cols] or null
  float* pre;         // [rows, cols]
  float* act;         // [rows, cols]

  MOE_HOST_DEVICE void operator()(std::int64_t i) const {
    if (bias != nullptr) pre[i] = pre[i] + bias[i % cols];
    act[i] = experts::activate(activation, pre[i]);
  }
};

// grad (dL/d act on entry) becomes dL/d pre = grad · f'(pre). The bias gradient is then the
// column sums of grad (ColumnSumOp).
struct ActivationBackwardOp {
  experts::Activation activation;
  const float* pre;
  float* grad;

  MOE_HOST_DEVICE void operator()(std::int64_t i) const {
    grad[i] *= experts::activate_grad(activation, pre[i]);
  }
};

// act = silu(pre) · gate.
struct SwigluForwardOp {
  const float* pre;
  const float* gate;
  float* act;

  MOE_HOST_DEVICE void operator()(std::int64_t i) const { act[i] = experts::silu(pre[i]) * gate[i]; }
};

// grad (dL/d act on entry) becomes dL/d pre; grad_gate = dL/d gate.
struct SwigluBackwardOp {
  const float* pre;
  const float* gate;
  float* grad;
  float* grad_gate;

  MOE_HOST_DEVICE void operator()(std::int64_t i) const {
    experts::swiglu_grads(pre[i], gate[i], grad[i], grad[i], grad_gate[i]);
  }
};

// Column j: sums[j] += Σ_i in[i, j], rows in order (a bias gradient; the same bits every run).
struct ColumnSumOp {
  std::int64_t rows, cols;
  const float* in;  // [rows, cols]
  float* sums;      // [cols]

  MOE_HOST_DEVICE void operator()(std::int64_t j) const {
    float sum = sums[j];
    for (std::int64_t i = 0; i < rows; ++i) sum += in[i * cols + j];
    sums[j] = sum;
  }
};

// y[i] += bias[i % cols]: the second layer's bias on a row-major [rows, cols] block.
struct AddRowBiasOp {
  std::int64_t cols;
  const float* bias;  // [cols]
  float* y;           // [rows, cols]

  MOE_HOST_DEVICE void operator()(std::int64_t i) const { y[i] += bias[i % cols]; }
};

}  // namespace moe::device
