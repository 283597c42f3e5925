// The precision of the expert GEMMs (and the router's), chosen per layer.
#pragma once

#include <optional>
#include <string_view>

namespace moe::experts {

// fp32: fp32 operands. bf16: activations and weights rounded to bfloat16, products accumulated
// and written in fp32; master weights and gradients stay fp32 (SPEC section 9 bounds such a
// narrower format at relative error 1e-2).
enum class Compute { fp32, bf16 };

// "fp32", "bf16"; nullopt for anything else.
std::optional<Compute> parse_compute(std::string_view name);
std::string_view to_string(Compute compute);

}  // namespace moe::experts
