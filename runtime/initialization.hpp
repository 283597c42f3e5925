// Deterministic parameter initialisation, as PyTorch's nn.Linear does it: every weight and bias
// uniform in (-1/sqrt(fan_in), 1/sqrt(fan_in)). Values come from a counter-based generator keyed
// by (seed, tensor name, element index), so a parameter's value does not depend on how many ranks
// share the experts: a run on 1, 2 or 4 ranks starts from the same model.
#pragma once

#include <cstdint>
#include <span>
#include <string_view>

namespace moe {

class MoeLayer;

// Uniform in (-bound, bound), element i of the stream named `name`.
void fill_uniform(std::span<float> values, float bound, std::uint64_t seed, std::string_view name);

// Normal(0, 1) by Box-Muller on the same generator, for synthetic inputs.
void fill_normal(std::span<float> values, std::uint64_t seed, std::string_view name);

// Initialises the router, this rank's experts and the shared expert (if any) like nn.Linear, keyed
// by the tensor names of SPEC.md section 2 (experts by their global index, so the values do not
// depend on the rank count), and zeroes the selection bias.
void init_parameters(MoeLayer& layer, std::uint64_t seed);

}  // namespace moe
