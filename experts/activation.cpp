#include "experts/activation.hpp"

#include <array>
#include <utility>

namespace moe::experts {
namespace {

constexpr std::array<std::pair<Activation, std::string_view>, 5> kNames{{
    {Activation::gelu, "gelu"},
    {Activation::gelu_tanh, "gelu_tanh"},
    {Activation::relu, "relu"},
    {Activation::silu, "silu"},
    {Activation::swiglu, "swiglu"},
}};

}  // namespace

std::optional<Activation> parse_activation(std::string_view name) {
  for (const auto& [activation, text] : kNames) {
    if (text == name) return activation;
  }
  return std::nullopt;
}

std::string_view to_string(Activation activation) {
  for (const auto& [value, text] : kNames) {
    if (value == activation) return text;
  }
  return "unknown";  // only reachable through a cast from an out-of-range integer
}

}  // namespace moe::experts
