#include "runtime/adam.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace moe {

Adam::Adam(AdamConfig config) : config_(config) {
  if (!(config.lr > 0)) throw std::invalid_argument("Adam: lr must be > 0");
  if (!(config.beta1 >= 0 && config.beta1 < 1) || !(config.beta2 >= 0 && config.beta2 < 1)) {
    throw std::invalid_argument("Adam: beta1 and beta2 must be in [0, 1)");
  }
  if (!(config.eps > 0)) throw std::invalid_argument("Adam: eps must be > 0");
}

void Adam::add(std::string name, std::span<float> value, std::span<const float> grad) {
  if (value.size() != grad.size()) {
    throw std::invalid_argument("Adam: parameter '" + name + "' has " +
                                std::to_string(value.size()) + " values but " +
                                std::to_string(grad.size()) + " gradients");
  }
  if (std::any_of(params_.begin(), params_.end(), [&](const Param& p) { return p.name == name; })) {
    throw std::invalid_argument("Adam: parameter '" + name + "' registered twice");
  }
  params_.push_back(Param{std::move(name), value, grad, std::vector<float>(value.size(), 0.0f),
                          std::vector<float>(value.size(), 0.0f)});
}

void Adam::set_step_count(std::int64_t steps) {
  if (steps < 0) throw std::invalid_argument("Adam: negative step count");
  step_count_ = steps;
}

void Adam::step(double lr) {
  ++step_count_;
  const double t = static_cast<double>(step_count_);
  // Bias corrections folded into the step size and epsilon once per step, in double; the
  // element-wise part stays in float (this is PyTorch's non-fused formulation).
  const double correction1 = 1.0 - std::pow(config_.beta1, t);
  const double correction2 = 1.0 - std::pow(config_.beta2, t);
  const float step_size = static_cast<float>(lr / correction1);
  const float sqrt_c2 = static_cast<float>(std::sqrt(correction2));
  const float b1 = static_cast<float>(config_.beta1), b2 = static_cast<float>(config_.beta2);
  const float eps = static_cast<float>(config_.eps);
  for (Param& p : params_) {
    float* value = p.value.data();
    const float* grad = p.grad.data();
    float* m = p.exp_avg.data();
    float* v = p.exp_avg_sq.data();
    const std::size_t n = p.value.size();
    for (std::size_t i = 0; i < n; ++i) {
      const float g = grad[i];
      m[i] = b1 * m[i] + (1.0f - b1) * g;
      v[i] = b2 * v[i] + (1.0f - b2) * g * g;
      value[i] -= step_size * m[i] / (std::sqrt(v[i]) / sqrt_c2 + eps);
    }
  }
}

}  // namespace moe
