// Adam (Kingma & Ba, with PyTorch's bias correction and epsilon placement) over parameters the
// caller owns as flat spans. Its state (two moments per parameter and the step count) is exposed
// by parameter name so a checkpoint can save and restore it and a resumed run continues exactly.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace moe {

struct AdamConfig {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
};

class Adam {
 public:
  // Throws std::invalid_argument for lr <= 0, betas outside [0, 1) or eps <= 0.
  explicit Adam(AdamConfig config);

  // Registers a parameter and the gradient step() reads for it (same length); both spans must
  // outlive the optimizer. Moments start at zero. Throws std::invalid_argument on a length
  // mismatch or a name registered twice.
  void add(std::string name, std::span<float> value, std::span<const float> grad);

  // One update of every registered parameter with learning rate `lr` (the caller's schedule):
  // m = b1·m + (1-b1)·g, v = b2·v + (1-b2)·g², value -= lr·(m/(1-b1^t)) / (sqrt(v/(1-b2^t)) + eps).
  // Element-wise in a fixed order, so the same inputs give bitwise the same result.
  void step(double lr);

  const AdamConfig& config() const { return config_; }
  // Updates done so far (t of the bias correction); set when restoring a checkpoint.
  std::int64_t step_count() const { return step_count_; }
  void set_step_count(std::int64_t steps);

  std::size_t num_params() const { return params_.size(); }
  const std::string& name(std::size_t i) const { return params_.at(i).name; }
  // First and second moments of parameter i, for saving and restoring.
  std::span<float> exp_avg(std::size_t i) { return params_.at(i).exp_avg; }
  std::span<float> exp_avg_sq(std::size_t i) { return params_.at(i).exp_avg_sq; }

 private:
  struct Param {
    std::string name;
    std::span<float> value;
    std::span<const float> grad;
    std::vector<float> exp_avg;
    std::vector<float> exp_avg_sq;
  };
  AdamConfig config_;
  std::int64_t step_count_ = 0;
  std::vector<Param> params_;
};

}  // namespace moe
