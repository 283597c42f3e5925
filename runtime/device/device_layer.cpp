#include "runtime/device/device_layer.hpp"

namespace moe::device {

std::string device_layer_problem(const MoeConfig& config) {
  if (config.exchange != ExchangeKind::variable) {
    return "runs the variable exchange only (exchange=" + std::string(to_string(config.exchange)) + ")";
  }
  if (config.compute != experts::Compute::fp32 || config.wire_format() != WireFormat::fp32) {
    return "computes and exchanges fp32 only (set compute=fp32 and wire=fp32)";
  }
  if (config.overlap_chunks == 0) return "takes a fixed overlap_chunks (not auto)";
  if (config.check_finite) return "does not check inputs for NaN/Inf (check_finite)";
  return {};
}

}  // namespace moe::device
