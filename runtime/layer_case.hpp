// A layer case (SPEC.md section 11): the parameters of every expert, the input rows of all ranks
// and the layer options, in one safetensors file; the input of moe-replay and of the tests.
#pragma once

#include <cstdint>
#include <filesystem>
#include <span>
#include <string_view>
#include <vector>

#include "runtime/config.hpp"
#include "runtime/safetensors.hpp"

namespace moe {

class MoeLayer;

// SPEC.md section 2 names of the selection bias and the shared expert's parameters' prefix.
inline constexpr std::string_view kSelectionBias = "gate.e_score_correction_bias";
inline constexpr std::string_view kSharedPrefix = "shared_expert.";

struct LayerCase {
  MoeConfig config;                         // shapes from the tensors, options from the metadata
  std::vector<std::int64_t> tokens_per_rank;
  SafetensorsFile file;                     // every tensor of the case
  bool has_grad_output() const { return file.tensors.count("grad_output") != 0; }
  std::int64_t total_tokens() const;
  // First input row of `rank` (its rows are the next tokens_per_rank[rank]).
  std::int64_t first_row(int rank) const;
};

// Validates a case read from `source_name` and returns it. Throws moe::Error naming the file and
// the first problem: a tensor missing, of another dtype or shape, a tensor the layer does not have,
// metadata that does not parse or is out of range (SPEC.md section 11: never silently replaced).
LayerCase layer_case_from_file(SafetensorsFile file, const std::string& source_name);
LayerCase read_layer_case(const std::filesystem::path& path);

// Builds the case file from its parts; the tensors must already carry SPEC.md names and shapes.
SafetensorsFile make_layer_case_file(const MoeConfig& config,
                                     std::span<const std::int64_t> tokens_per_rank,
                                     std::map<std::string, Tensor> tensors);

// Copies the router's weight and the experts this layer's rank owns from the case.
void load_parameters(const LayerCase& layer_case, MoeLayer& layer);

}  // namespace moe
