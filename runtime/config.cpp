#include "runtime/config.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>

#include "runtime/config_fields.hpp"
#include "runtime/error.hpp"

namespace moe {

std::optional<DropPolicy> parse_drop_policy(std::string_view name) {
  if (name == "position") return DropPolicy::position;
  if (name == "score") return DropPolicy::score;
  return std::nullopt;
}

std::string_view to_string(DropPolicy policy) {
  return policy == DropPolicy::position ? "position" : "score";
}

std::optional<ExchangeKind> parse_exchange_kind(std::string_view name) {
  if (name == "variable") return ExchangeKind::variable;
  if (name == "padded") return ExchangeKind::padded;
  if (name == "hierarchical") return ExchangeKind::hierarchical;
  return std::nullopt;
}

std::string_view to_string(ExchangeKind kind) {
  switch (kind) {
    case ExchangeKind::variable: return "variable";
    case ExchangeKind::padded: return "padded";
    case ExchangeKind::hierarchical: return "hierarchical";
  }
  return "?";
}

std::optional<GateKind> parse_gate_kind(std::string_view name) {
  if (name == "softmax") return GateKind::softmax;
  if (name == "sigmoid") return GateKind::sigmoid;
  return std::nullopt;
}

std::string_view to_string(GateKind gate) { return gate == GateKind::softmax ? "softmax" : "sigmoid"; }

std::optional<CapacityScope> parse_capacity_scope(std::string_view name) {
  if (name == "rank") return CapacityScope::rank;
  if (name == "global") return CapacityScope::global;
  return std::nullopt;
}

std::string_view to_string(CapacityScope scope) { return scope == CapacityScope::rank ? "rank" : "global"; }

std::string format_double(double value) {
  // The shortest text that reads back to the same double (0.1, not 0.10000000000000001).
  char text[32];
  const auto [end, ec] = std::to_chars(text, text + sizeof text, value);
  return std::string(text, end);
}

void MoeConfig::validate() const {
  for (const ConfigField& field : config_fields()) {
    const std::string broken = field.broken_rule(*this);
    if (!broken.empty()) throw Error(std::string(field.name) + "=" + field.to_text(*this) + " " + broken);
  }
}

std::map<std::string, std::string> MoeConfig::options_to_metadata() const {
  std::map<std::string, std::string> metadata;
  for (const ConfigField& field : config_fields()) {
    if (field.kind == FieldKind::layer) metadata[std::string(field.name)] = field.to_text(*this);
  }
  // A file states the SPEC's value of topk_group (1..n_group), not the in-memory "all" (0).
  metadata["topk_group"] = std::to_string(groups_per_token());
  return metadata;
}

void MoeConfig::options_from_metadata(const std::map<std::string, std::string>& metadata,
                                      const std::vector<std::string>& other_keys) {
  MoeConfig parsed = *this;  // a failed parse leaves every option as it was
  for (const auto& [key, value] : metadata) {
    if (std::find(other_keys.begin(), other_keys.end(), key) != other_keys.end()) continue;
    const ConfigField* field = find_config_field(key);
    if (!field || field->kind != FieldKind::layer) {
      std::string known;
      for (const ConfigField& f : config_fields()) {
        if (f.kind == FieldKind::layer) known += (known.empty() ? "" : ", ") + std::string(f.name);
      }
      for (const std::string& k : other_keys) known += ", " + k;
      throw Error("metadata key '" + key + "' is not an option of this layer (known: " + known + ")");
    }
    field->from_text(parsed, value);
  }
  // In a file topk_group is 1..n_group; 0 is the in-memory default only.
  if (auto it = metadata.find("topk_group"); it != metadata.end() && parsed.topk_group == 0) {
    throw Error("topk_group=0 is outside 1..n_group (" + std::to_string(parsed.n_group) + ")");
  }
  *this = std::move(parsed);
}

std::vector<std::pair<std::string, std::string>> MoeConfig::fields() const {
  std::vector<std::pair<std::string, std::string>> out;
  for (const ConfigField& field : config_fields()) out.emplace_back(field.name, field.to_text(*this));
  return out;
}

std::string MoeConfig::summary() const {
  std::string out;
  for (const auto& [name, value] : fields()) out += (out.empty() ? "" : " ") + name + "=" + value;
  return out;
}

std::int64_t parse_int64(std::string_view what, std::string_view text) {
  std::int64_t value = 0;
  const char* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, value);
  if (text.empty() || ec != std::errc() || ptr != end) {
    throw Error(std::string(what) + ": '" + std::string(text) + "' is not an integer");
  }
  return value;
}

double parse_double(std::string_view what, std::string_view text) {
  double value = 0;
  const char* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, value);
  if (text.empty() || ec != std::errc() || ptr != end || !std::isfinite(value)) {
    throw Error(std::string(what) + ": '" + std::string(text) + "' is not a finite number");
  }
  return value;
}

bool parse_bool(std::string_view what, std::string_view text) {
  if (text == "true") return true;
  if (text == "false") return false;
  throw Error(std::string(what) + ": '" + std::string(text) + "' is not true or false");
}

}  // namespace moe
