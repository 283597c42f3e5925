#include "experts/compute.hpp"

namespace moe::experts {

std::optional<Compute> parse_compute(std::string_view name) {
  if (name == "fp32") return Compute::fp32;
  if (name == "bf16") return Compute::bf16;
  return std::nullopt;
}

std::string_view to_string(Compute compute) {
  return compute == Compute::bf16 ? "bf16" : "fp32";
}

}  // namespace moe::experts
