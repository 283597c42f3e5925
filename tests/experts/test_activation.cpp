// Activation names, and the fp32 activations/derivatives the kernels use, against float64.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "experts/activation.hpp"
#include "experts/activation_kernels.hpp"
#include "experts/activation_math.hpp"
#include "tests/experts/ffn_reference.hpp"

namespace {

using namespace moe::experts;
using moe::experts::test::ref_activate;
using moe::experts::test::ref_activate_grad;

const std::vector<Activation> kAll{Activation::gelu, Activation::gelu_tanh, Activation::relu,
                                   Activation::silu, Activation::swiglu};

// -12 ... 12 in steps of 1/64 (exact in fp32), plus values around 0.
std::vector<float> sample_points() {
  std::vector<float> xs;
  for (int i = -768; i <= 768; ++i) xs.push_back(static_cast<float>(i) / 64.0f);
  for (const float x : {1e-30f, -1e-30f, 1e-7f, -1e-7f, 0.3333333f, -2.7182817f}) xs.push_back(x);
  return xs;
}

}  // namespace

TEST_CASE("experts/activation names round-trip", "[experts][activation]") {
  for (const Activation a : kAll) {
    CAPTURE(std::string(to_string(a)));
    REQUIRE(parse_activation(to_string(a)) == a);
  }
  CHECK(to_string(Activation::gelu) == "gelu");
  CHECK(to_string(Activation::gelu_tanh) == "gelu_tanh");
  CHECK(to_string(Activation::relu) == "relu");
  CHECK(to_string(Activation::silu) == "silu");
  CHECK(to_string(Activation::swiglu) == "swiglu");
  for (const char* bad : {"", "GELU", "gelu ", "swish", "tanh", "gelu_erf", "geglu"}) {
    CAPTURE(bad);
    CHECK_FALSE(parse_activation(bad).has_value());
  }
  CHECK(is_gated(Activation::swiglu));
  CHECK_FALSE(is_gated(Activation::silu));
}

TEST_CASE("experts/activation exp_approx is accurate to fp32", "[experts][activation]") {
  for (int i = -8700; i <= 8800; ++i) {
    const float x = static_cast<float>(i) / 100.0f;
    const double want = std::exp(static_cast<double>(x));
    CAPTURE(x);
    REQUIRE(std::abs(static_cast<double>(exp_approx(x)) - want) <= 3e-7 * want);
  }
  CHECK(exp_approx(0.0f) == 1.0f);
  CHECK(std::isfinite(exp_approx(1000.0f)));
  CHECK(exp_approx(-1000.0f) >= 0.0f);
  CHECK(exp_approx(-1000.0f) < 1e-37f);
}

TEST_CASE("experts/activation reference derivatives agree with finite differences",
          "[experts][activation]") {
  // Central differences in double, step 1e-5: truncation and rounding both ~1e-10.
  for (const Activation a : kAll) {
    CAPTURE(std::string(to_string(a)));
    for (const float xf : sample_points()) {
      const double x = static_cast<double>(xf);
      if (a == Activation::relu && std::abs(x) < 1e-4) continue;  // the kink
      const double step = 1e-5;
      const double fd = (ref_activate(a, x + step) - ref_activate(a, x - step)) / (2 * step);
      CAPTURE(x);
      REQUIRE(std::abs(ref_activate_grad(a, x) - fd) <= 1e-8 * std::max(1.0, std::abs(x)));
    }
  }
}

TEST_CASE("experts/activation fp32 values and derivatives match float64", "[experts][activation]") {
  for (const Activation a : kAll) {
    CAPTURE(std::string(to_string(a)));
    for (const float xf : sample_points()) {
      const double x = static_cast<double>(xf);
      CAPTURE(x);
      // Absolute error at the scale of the input (what a tensor norm sees), and relative error
      // wherever the value is well above fp32's smallest normal: the tails are not flushed to
      // zero early. 2e-5 there because the exponent is ~60 in the tails and its fp32 rounding
      // alone is ~4e-6 of the result.
      const double f = ref_activate(a, x);
      const double got = static_cast<double>(activate(a, xf));
      REQUIRE(std::abs(got - f) <= 3e-7 * std::max(1.0, std::abs(x)));
      if (std::abs(f) > 1e-30) REQUIRE(std::abs(got - f) <= 2e-5 * std::abs(f));
      const double g = ref_activate_grad(a, x);
      const double got_g = static_cast<double>(activate_grad(a, xf));
      REQUIRE(std::abs(got_g - g) <= 3e-7 * std::max(1.0, std::abs(x)));
    }
  }
}

TEST_CASE("experts/activation NaN stays NaN", "[experts][activation]") {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (const Activation a : kAll) {
    CAPTURE(std::string(to_string(a)));
    CHECK(std::isnan(activate(a, nan)));
    if (a != Activation::relu) CHECK(std::isnan(activate_grad(a, nan)));
  }
}

TEST_CASE("experts/activation relu has derivative 0 at 0, like PyTorch", "[experts][activation]") {
  CHECK(relu(0.0f) == 0.0f);
  CHECK(relu_grad(0.0f) == 0.0f);
  CHECK(relu_grad(-0.0f) == 0.0f);
  CHECK(relu_grad(1e-38f) == 1.0f);
  CHECK(relu(-3.0f) == 0.0f);
  CHECK(relu(2.5f) == 2.5f);
}

TEST_CASE("experts/activation kernels apply bias, activation and derivative",
          "[experts][activation]") {
  const Activation a = GENERATE(Activation::gelu, Activation::gelu_tanh, Activation::relu,
                                Activation::silu);
  CAPTURE(std::string(to_string(a)));
  const std::int64_t rows = 3, cols = 11;  // odd, so the vector loops have tails
  std::vector<float> pre(rows * cols), act(rows * cols), bias(cols), grad(rows * cols);
  for (std::size_t i = 0; i < pre.size(); ++i) {
    pre[i] = static_cast<float>(i % 13) * 0.5f - 3.0f;
    grad[i] = 1.0f + static_cast<float>(i % 5) * 0.25f;
  }
  for (std::size_t j = 0; j < bias.size(); ++j) bias[j] = static_cast<float>(j) * 0.125f - 0.5f;
  const std::vector<float> raw = pre, upstream = grad;
  bias_activation_forward(a, rows, cols, bias, pre, act);
  std::vector<float> bias_grad(cols, 1.0f);
  activation_backward(a, rows, cols, pre, grad, bias_grad);
  std::vector<double> want_bias_grad(cols, 1.0);
  // The kernels may run an AVX-512 clone that fuses multiply-adds, so they agree with the
  // scalar functions to rounding, not bit for bit.
  const auto close = [](float got, float want) {
    return std::abs(got - want) <= 1e-6f * std::max(1.0f, std::abs(want));
  };
  for (std::size_t i = 0; i < pre.size(); ++i) {
    const float v = raw[i] + bias[i % cols];
    CAPTURE(i, v);
    CHECK(pre[i] == v);
    CHECK(close(act[i], activate(a, v)));
    CHECK(close(grad[i], upstream[i] * activate_grad(a, v)));
    want_bias_grad[i % cols] += static_cast<double>(grad[i]);
  }
  for (std::size_t j = 0; j < bias_grad.size(); ++j) {
    CHECK(static_cast<double>(bias_grad[j]) == Approx(want_bias_grad[j]).epsilon(1e-6));
  }
}

TEST_CASE("experts/activation swiglu kernels", "[experts][activation]") {
  std::vector<float> pre{-5.0f, -1.0f, 0.0f, 0.5f, 3.0f, 9.0f, -0.25f};
  std::vector<float> gate{1.0f, -2.0f, 3.0f, 0.5f, -1.5f, 2.0f, 4.0f};
  std::vector<float> act(pre.size()), grad(pre.size(), 0.75f), grad_gate(pre.size());
  swiglu_forward(pre, gate, act);
  swiglu_backward(pre, gate, grad, grad_gate);
  for (std::size_t i = 0; i < pre.size(); ++i) {
    const double p = static_cast<double>(pre[i]), g = static_cast<double>(gate[i]);
    const double silu_p = ref_activate(Activation::silu, p);
    CHECK(static_cast<double>(act[i]) == Approx(silu_p * g).epsilon(1e-6).margin(1e-7));
    CHECK(static_cast<double>(grad_gate[i]) == Approx(0.75 * silu_p).epsilon(1e-6).margin(1e-7));
    CHECK(static_cast<double>(grad[i]) ==
          Approx(0.75 * g * ref_activate_grad(Activation::silu, p)).epsilon(1e-6).margin(1e-7));
  }
}
