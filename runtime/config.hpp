// The configuration of one MoE layer: every option of SPEC.md with its default, validated once at
// construction with a message that names the option, its value and the rule it breaks.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "experts/activation.hpp"
#include "runtime/wire_format.hpp"

namespace moe {

enum class DropPolicy { position, score };

std::optional<DropPolicy> parse_drop_policy(std::string_view name);
std::string_view to_string(DropPolicy policy);

// How rows are exchanged: `variable` sends each expert's kept rows after a count exchange;
// `padded` sends every (source, expert) pair a fixed block of capacity slots with the row count in
// its header, so no count exchange precedes the payload (not for dropless layers: no capacity).
enum class ExchangeKind { variable, padded };

std::optional<ExchangeKind> parse_exchange_kind(std::string_view name);
std::string_view to_string(ExchangeKind kind);

inline constexpr std::int64_t kMaxOverlapChunks = 64;

struct MoeConfig {
  std::int64_t num_experts = 0;  // E, a multiple of the expert-parallel size
  std::int64_t d_model = 0;      // d
  std::int64_t d_hidden = 0;     // h
  std::int64_t top_k = 2;        // k, 1..E
  double capacity_factor = 1.25; // <= 0: dropless
  std::int64_t min_capacity = 4;
  DropPolicy drop_policy = DropPolicy::position;
  experts::Activation activation = experts::Activation::gelu;
  bool normalize_topk = false;
  double aux_loss_coef = 0.01;
  double z_loss_coef = 0.0;

  // Execution: how the layer runs, never what it computes (SPEC.md section 9).
  std::int64_t overlap_chunks = 1;  // pipeline chunks; 0 = auto, chosen from the first call's timings
  ExchangeKind exchange = ExchangeKind::variable;
  WireFormat wire = WireFormat::fp32;  // bf16 only when asked for (relative error <= 1e-2)
  bool check_finite = false;  // refuse NaN/Inf in inputs and output gradients (one pass over each)
  std::string label = "moe";  // names the layer in diagnostics (watchdog, errors)

  bool dropless() const { return capacity_factor <= 0.0; }
  std::int64_t experts_per_rank(int ep_size) const { return num_experts / ep_size; }

  // Throws moe::Error naming the first option that is out of range for `ep_size` ranks.
  void validate(int ep_size) const;

  // Metadata form (as in a layer case file, SPEC.md section 11): only the layer options, not
  // the shapes, which come from the tensors.
  std::map<std::string, std::string> options_to_metadata() const;
  // Sets the options present in `metadata`; keys it does not know are ignored (a case file carries
  // other keys too). A value that does not parse throws moe::Error naming the key and value.
  void options_from_metadata(const std::map<std::string, std::string>& metadata);

  // Every option by name with its value as text, in a fixed order: what ranks compare to check
  // they run the same layer (the label is left out: it only names the layer).
  std::vector<std::pair<std::string, std::string>> fields() const;

  // One line for logs: "E=8 d=512 h=1024 k=2 cf=1.25 min_capacity=4 policy=position ...".
  std::string summary() const;
};

// Strict parsers for user-given text: the whole string must be the value. They throw moe::Error
// naming `what` and the text.
std::int64_t parse_int64(std::string_view what, std::string_view text);
double parse_double(std::string_view what, std::string_view text);
bool parse_bool(std::string_view what, std::string_view text);

}  // namespace moe
