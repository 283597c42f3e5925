// Command-line options for how a layer runs, never what it computes: --overlap-chunks, --exchange
// and --wire (runtime/config.hpp). Shared by the programs that build a layer from flags.
#pragma once

#include <boost/program_options.hpp>
#include <string>

#include "runtime/config.hpp"

namespace moe::apps {

// Text as given, until finish_execution_options checks it.
struct ExecutionOptions {
  std::string overlap_chunks = "1";
  std::string exchange = "variable";
  std::string wire = "fp32";
};

void add_execution_options(boost::program_options::options_description& options, ExecutionOptions& out);

// Sets the execution fields of `config`; throws UsageError naming a bad value.
void finish_execution_options(const ExecutionOptions& options, MoeConfig& config);

}  // namespace moe::apps
