#include "apps/execution_options.hpp"

#include <cmath>

#include "apps/mpi_program.hpp"

namespace moe::apps {

namespace po = boost::program_options;

void add_execution_options(po::options_description& options, ExecutionOptions& out) {
  add_config_options(options, MoeConfig{}, {FieldKind::execution}, out.given);
  options.add_options()
      ("watchdog-seconds", po::value(&out.watchdog_seconds)->default_value(out.watchdog_seconds, "300"),
       "abort the job when an exchange or reduction has not completed after this long, naming the "
       "layer, call, phase and the peers not heard from; 0 turns it off");
}

void finish_execution_options(const ExecutionOptions& options, MoeConfig& config) {
  finish_config_options(options.given, config);
  if (!(options.watchdog_seconds >= 0) || !std::isfinite(options.watchdog_seconds)) {
    throw UsageError("--watchdog-seconds must be a finite number >= 0");
  }
}

void apply_watchdog(const ExecutionOptions& options, comm::Communicator& world) {
  world.set_timeout(options.watchdog_seconds);
}

}  // namespace moe::apps
