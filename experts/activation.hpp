// Expert activations of SPEC.md section 5, by name.
#pragma once

#include <optional>
#include <string_view>

namespace moe::experts {

enum class Activation { gelu, gelu_tanh, relu, silu, swiglu };

// "gelu", "gelu_tanh", "relu", "silu", "swiglu"; nullopt for anything else.
std::optional<Activation> parse_activation(std::string_view name);
std::string_view to_string(Activation activation);

// swiglu is gated: it has a third weight w3 and no biases.
constexpr bool is_gated(Activation a) { return a == Activation::swiglu; }

}  // namespace moe::experts
