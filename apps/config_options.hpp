// Command-line options generated from the configuration's field table (runtime/config_fields.hpp):
// every field of the chosen kinds becomes --name-with-dashes with its help and its default, so a
// new configuration field is an option of every program without a line here.
#pragma once

#include <boost/program_options.hpp>
#include <initializer_list>
#include <map>
#include <string>

#include "runtime/config.hpp"
#include "runtime/config_fields.hpp"

namespace moe::apps {

// The text given for each field, kept as text until finish_config_options parses it, so a bad value
// is reported with the option's name.
struct ConfigOptions {
  std::map<std::string, std::string> text;  // field name -> value as given (or its default)
};

// Adds an option for every field of `kinds`, defaulting to its value in `defaults`.
void add_config_options(boost::program_options::options_description& options, const MoeConfig& defaults,
                        std::initializer_list<FieldKind> kinds, ConfigOptions& out);

// Sets every field `out` holds text for; throws UsageError naming the option and the bad value.
void finish_config_options(const ConfigOptions& options, MoeConfig& config);

// "--top-k" for top_k, "--experts" for num_experts.
std::string option_name(const ConfigField& field);

}  // namespace moe::apps
