// Turns the float64 reference's cases into what the runtime takes (a layer case file, a config),
// and measures results against the reference. Shared by the layer tests and the replay tools.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/config.hpp"
#include "runtime/layer_case.hpp"
#include "runtime/safetensors.hpp"
#include "tests/reference/moe_reference.hpp"

namespace moe::test {

MoeConfig to_config(const ref::LayerConfig& config);

// The case as a SPEC.md section 11 file: parameters, input, grad_output (when present) and
// metadata. Values are exact: the generator draws float-representable numbers.
SafetensorsFile to_case_file(const ref::LayerCase& c);

// The reference's case read back from a layer case file (the file is the ground truth both sides
// read).
ref::LayerCase from_case_file(const LayerCase& lc);

// The reference's tensor for an expert parameter named as in SPEC.md ("w1.weight", "w2.bias", ...).
const std::vector<double>& expert_param(const ref::ExpertParams& params, std::string_view name);
std::vector<double>& expert_param(ref::ExpertParams& params, std::string_view name);

// Sums for ‖a − ref‖ / ‖ref‖, so ranks can add their parts before dividing.
struct ErrorSums {
  double diff_sq = 0;
  double ref_sq = 0;
  void add(std::span<const float> actual, std::span<const double> expected);
  void add(double actual, double expected);
  // Relative error; when the reference is exactly zero, the absolute error instead.
  double relative() const;
};

// The layer cases SPEC.md and the forward issue name, for a group of `ranks` ranks: uneven tokens,
// an empty rank, a hot expert, k = 1, k = E, E = P, E = 64, dropless, tight capacity, the score
// policy, normalize_topk, every activation, d and h not multiples of 8.
struct NamedCase {
  std::string name;
  ref::CaseSpec spec;
};
std::vector<NamedCase> standard_cases(int ranks);

// Cases for the bf16 formats (wire and compute), which SPEC.md section 9 bounds at 1e-2: every
// activation at a moderate width (d 64, h 96, E = 4 per rank, ~100-160 tokens per rank), with
// dropping. The bound is a statement about
// layers of realistic width; on the standard cases' toy widths a few rows per expert leave nothing
// to average (measured: up to 12% on an expert with 3 rows).
std::vector<NamedCase> bf16_cases(int ranks);

// relu is the exception for gradients in bf16: rounding an expert's input moves some
// pre-activations across zero, and each such entry flips relu' from 1 to 0 and moves its whole
// gradient term. About 0.1% of entries flip, which is ~2% relative error in dx and ~5% in the
// expert weight gradients at any width (measured). Outputs stay within 1e-2. docs: README "bf16 wire".
inline constexpr double kReluBf16GradientBound = 0.1;

}  // namespace moe::test
