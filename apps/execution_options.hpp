// Command-line options for how a layer runs, never what it computes: the execution fields of the
// configuration's table (--overlap-chunks, --exchange, --wire, --check-finite, ...) and
// --watchdog-seconds (comm/communicator.hpp). Shared by the programs that run a layer.
#pragma once

#include <boost/program_options.hpp>
#include <string>

#include "apps/config_options.hpp"
#include "comm/communicator.hpp"

namespace moe::apps {

struct ExecutionOptions {
  ConfigOptions given;
  double watchdog_seconds = 300;
};

void add_execution_options(boost::program_options::options_description& options, ExecutionOptions& out);

// Sets the execution fields of `config`; throws UsageError naming a bad value.
void finish_execution_options(const ExecutionOptions& options, MoeConfig& config);

// Arms the watchdog of the program's world communicator (groups split from it inherit it).
void apply_watchdog(const ExecutionOptions& options, comm::Communicator& world);

}  // namespace moe::apps
