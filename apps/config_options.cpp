#include "apps/config_options.hpp"

#include <algorithm>

#include "apps/mpi_program.hpp"
#include "runtime/error.hpp"

namespace moe::apps {

namespace po = boost::program_options;

std::string option_name(const ConfigField& field) {
  std::string name = "--" + std::string(field.option.empty() ? field.name : field.option);
  std::replace(name.begin(), name.end(), '_', '-');
  return name;
}

void add_config_options(po::options_description& options, const MoeConfig& defaults,
                        std::initializer_list<FieldKind> kinds, ConfigOptions& out) {
  for (const ConfigField& field : config_fields()) {
    if (std::find(kinds.begin(), kinds.end(), field.kind) == kinds.end()) continue;
    const std::string name(field.name);
    std::string& text = out.text[name];  // a map keeps its elements where they are
    auto* value = po::value(&text)->default_value(field.to_text(defaults));
    if (field.to_text(defaults) == "false") value->implicit_value("true");  // a switch: --check-finite
    const std::string flag = option_name(field).substr(2);
    options.add_options()(flag.c_str(), value, std::string(field.help).c_str());
  }
}

void finish_config_options(const ConfigOptions& options, MoeConfig& config) {
  for (const auto& [name, text] : options.text) {
    try {
      find_config_field(name)->from_text(config, text);
    } catch (const Error& e) {
      // The field's message starts with its name: say the option instead.
      std::string message = e.what();
      if (message.rfind(name, 0) == 0) message = option_name(*find_config_field(name)) + message.substr(name.size());
      throw UsageError(message);
    }
  }
}

}  // namespace moe::apps
