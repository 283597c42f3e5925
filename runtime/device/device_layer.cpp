#include "runtime/device/device_layer.hpp"

namespace moe::device {

std::string device_layer_problem(const MoeConfig& config) {
  if (config.exchange == ExchangeKind::hierarchical) {
    return "runs the variable and padded exchanges only (exchange=hierarchical)";
  }
  if (config.compute != experts::Compute::fp32) return "computes fp32 only (set compute=fp32; wire=bf16 runs)";
  return {};
}

}  // namespace moe::device
