// The configuration of one MoE layer: every option of SPEC.md with its default, validated once at
// construction with a message that names the option, its value and the rule it breaks.
//
// Every field is described once, in the table of runtime/config_fields.cpp (name, default, rule,
// help); validation, the case-file metadata, the summary, the consistency check across ranks and
// the programs' command-line options all read that table.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "experts/activation.hpp"
#include "experts/compute.hpp"
#include "runtime/wire_format.hpp"

namespace moe {

enum class DropPolicy { position, score };
std::optional<DropPolicy> parse_drop_policy(std::string_view name);
std::string_view to_string(DropPolicy policy);

// How the router scores experts (SPEC.md section 3): softmax over the logits, or an elementwise
// sigmoid whose choice of experts is steered by a selection bias (DeepSeek-V3).
enum class GateKind { softmax, sigmoid };
std::optional<GateKind> parse_gate_kind(std::string_view name);
std::string_view to_string(GateKind gate);

// Who decides capacity (SPEC.md section 4): each source rank for its own tokens, or the whole group.
enum class CapacityScope { rank, global };
std::optional<CapacityScope> parse_capacity_scope(std::string_view name);
std::string_view to_string(CapacityScope scope);

// How rows are exchanged. Two flat exchanges (one all-to-all over every rank): `variable` sends
// each expert's kept rows after a count exchange; `padded` sends every (source, expert) pair a
// fixed block of capacity slots with the row count in its header, so no count exchange precedes
// the payload (not for dropless layers: no capacity). `hierarchical` (comm/hierarchical_exchange.hpp)
// sends each token once per destination node and fans it out inside the node; the way back sums
// inside the node first. It runs one chunk in fp32 (its relays sum rows: see its field's rule).
enum class ExchangeKind { variable, padded, hierarchical };
std::optional<ExchangeKind> parse_exchange_kind(std::string_view name);
std::string_view to_string(ExchangeKind kind);

inline constexpr std::int64_t kMaxOverlapChunks = 64;

struct MoeConfig {
  // Shapes (in a layer case they come from the tensors).
  std::int64_t num_experts = 0;      // E, any count >= 1 on any rank count (SPEC.md section 1)
  std::int64_t d_model = 0;          // d
  std::int64_t d_hidden = 0;         // h
  std::int64_t d_shared_hidden = 0;  // h_s of the shared expert; 0: no shared expert

  // What the layer computes (SPEC.md sections 3-7).
  std::int64_t top_k = 2;        // k, 1..E
  double capacity_factor = 1.25; // <= 0: dropless
  std::int64_t min_capacity = 4;
  DropPolicy drop_policy = DropPolicy::position;
  CapacityScope capacity_scope = CapacityScope::rank;
  experts::Activation activation = experts::Activation::gelu;
  GateKind gate = GateKind::softmax;
  std::int64_t n_group = 1;      // G, expert groups for group-limited routing
  std::int64_t topk_group = 0;   // M, groups a token may use; 0: all G (the SPEC's default)
  bool normalize_topk = false;
  double routed_scaling_factor = 1.0;
  double aux_loss_coef = 0.01;
  double z_loss_coef = 0.0;
  double bias_update_rate = 0.0;  // γ of the selection-bias update (sigmoid gate only)

  // Execution: how the layer runs, never what it computes (SPEC.md section 9).
  std::int64_t overlap_chunks = 1;  // pipeline chunks; 0 = auto, chosen from the first call's timings
  ExchangeKind exchange = ExchangeKind::variable;
  // Ranks per node (consecutive blocks), for the hierarchical exchange and the statistics of
  // inter-node traffic; 0: the hosts as MPI sees them (comm/node_topology.hpp).
  std::int64_t ranks_per_node = 0;
  // Precision of the expert GEMMs (routed and shared experts; the router stays fp32, see
  // README "bf16 compute"): bf16 only when asked for (relative error <= 1e-2).
  experts::Compute compute = experts::Compute::fp32;
  // Format of exchanged rows; unset ("auto"): the compute precision's, so compute=bf16 sends bf16
  // unless the wire was set to fp32. Read it through wire_format().
  std::optional<WireFormat> wire;
  bool check_finite = false;  // refuse NaN/Inf in inputs and output gradients (one pass over each)
  std::string label = "moe";  // names the layer in diagnostics (watchdog, errors)

  bool dropless() const { return capacity_factor <= 0.0; }
  WireFormat wire_format() const {
    return wire ? *wire : compute == experts::Compute::bf16 ? WireFormat::bf16 : WireFormat::fp32;
  }
  bool has_shared_expert() const { return d_shared_hidden > 0; }
  std::int64_t groups_per_token() const { return topk_group > 0 ? topk_group : n_group; }

  // Throws moe::Error naming the first option that breaks its rule.
  void validate() const;

  // Metadata form (as in a layer case file, SPEC.md section 11): the layer options, not the
  // shapes (which come from the tensors) nor the execution options.
  std::map<std::string, std::string> options_to_metadata() const;
  // Sets the options present in `metadata`. A key that is not a layer option (other than those
  // in `other_keys`, which the caller reads itself) or a value that does not parse throws
  // moe::Error naming the key: a case written for another layer is never computed as this one.
  void options_from_metadata(const std::map<std::string, std::string>& metadata,
                             const std::vector<std::string>& other_keys = {});

  // Every option by name with its value as text, in the table's order: what ranks compare to
  // check they run the same layer (the label is left out: it only names the layer).
  std::vector<std::pair<std::string, std::string>> fields() const;

  // One line for logs: "num_experts=8 d_model=512 ... wire=auto".
  std::string summary() const;
};

// Placement of SPEC.md section 1: rank r of P owns the global experts
// floor(r*E/P) .. floor((r+1)*E/P) - 1 (contiguous, as even as possible; none when P > E leaves
// it out).
inline std::int64_t first_expert_of(std::int64_t rank, std::int64_t num_experts, std::int64_t ep_size) {
  return rank * num_experts / ep_size;
}
inline std::int64_t num_experts_of(std::int64_t rank, std::int64_t num_experts, std::int64_t ep_size) {
  return first_expert_of(rank + 1, num_experts, ep_size) - first_expert_of(rank, num_experts, ep_size);
}
// The rank owning global expert e: the largest r with floor(r*E/P) <= e.
inline std::int64_t owner_of_expert(std::int64_t e, std::int64_t num_experts, std::int64_t ep_size) {
  return ((e + 1) * ep_size - 1) / num_experts;
}

// Strict parsers for user-given text: the whole string must be the value. They throw moe::Error
// naming `what` and the text.
std::int64_t parse_int64(std::string_view what, std::string_view text);
double parse_double(std::string_view what, std::string_view text);
bool parse_bool(std::string_view what, std::string_view text);

// A double as the shortest text that reads back to the same value.
std::string format_double(double value);

}  // namespace moe
