// The one table that describes every MoeConfig field: its name, where it belongs, its text form,
// its rule and its help. Validation, the case-file metadata, the summary, the consistency check
// across ranks and the programs' command-line options are loops over this table, so a new option
// is one row in config_fields.cpp.
#pragma once

#include <functional>
#include <span>
#include <string>
#include <string_view>

#include "runtime/config.hpp"

namespace moe {

enum class FieldKind {
  shape,      // sizes; in a layer case they come from the tensors
  layer,      // what the layer computes; in a layer case they are metadata keys (SPEC.md section 11)
  execution,  // how it runs, never what it computes
};

struct ConfigField {
  std::string_view name;  // metadata key; the command-line option is the same with '-' for '_'
  FieldKind kind;
  std::string_view help;
  // The value as text, and back. from_text throws moe::Error "<name>: '<text>' is not ...".
  std::function<std::string(const MoeConfig&)> to_text;
  std::function<void(MoeConfig&, std::string_view)> from_text;
  // "" when the value is legal in this configuration, else the rule it breaks, worded to follow
  // "<name>=<value> " (for example "is outside 1..num_experts (8)").
  std::function<std::string(const MoeConfig&)> broken_rule;
  // The command-line option when it is not the name with '-' for '_' (num_experts: --experts).
  std::string_view option = {};
};

std::span<const ConfigField> config_fields();
// The field called `name`, or nullptr.
const ConfigField* find_config_field(std::string_view name);

}  // namespace moe
