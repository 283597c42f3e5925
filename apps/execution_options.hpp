// Command-line options for how a layer runs, never what it computes: --overlap-chunks, --exchange,
// --wire, --check-finite (runtime/config.hpp) and --watchdog-seconds (comm/communicator.hpp).
// Shared by the programs that run a layer.
#pragma once

#include <boost/program_options.hpp>
#include <string>

#include "comm/communicator.hpp"
#include "runtime/config.hpp"

namespace moe::apps {

// Text as given, until finish_execution_options checks it.
struct ExecutionOptions {
  std::string overlap_chunks = "1";
  std::string exchange = "variable";
  std::string wire = "fp32";
  bool check_finite = false;
  double watchdog_seconds = 300;
};

void add_execution_options(boost::program_options::options_description& options, ExecutionOptions& out);

// Sets the execution fields of `config`; throws UsageError naming a bad value.
void finish_execution_options(const ExecutionOptions& options, MoeConfig& config);

// Arms the watchdog of the program's world communicator (groups split from it inherit it).
void apply_watchdog(const ExecutionOptions& options, comm::Communicator& world);

}  // namespace moe::apps
