#include "apps/execution_options.hpp"

#include <charconv>
#include <cmath>

#include "apps/mpi_program.hpp"

namespace moe::apps {

namespace po = boost::program_options;

void add_execution_options(po::options_description& options, ExecutionOptions& out) {
  options.add_options()
      ("overlap-chunks", po::value(&out.overlap_chunks)->default_value(out.overlap_chunks),
       "chunks of the exchange/compute pipeline (1..64), or auto (chosen from the first call's timings)")
      ("exchange", po::value(&out.exchange)->default_value(out.exchange),
       "variable (counts, then rows) | padded (capacity slots, no count exchange)")
      ("wire", po::value(&out.wire)->default_value(out.wire),
       "fp32 | bf16: format of exchanged rows (bf16: relative error <= 1e-2)")
      ("check-finite", po::bool_switch(&out.check_finite),
       "refuse NaN or infinite inputs and output gradients (every rank reports the row)")
      ("watchdog-seconds", po::value(&out.watchdog_seconds)->default_value(out.watchdog_seconds, "300"),
       "abort the job when an exchange or reduction has not completed after this long, naming the "
       "layer, call, phase and the peers not heard from; 0 turns it off");
}

void finish_execution_options(const ExecutionOptions& options, MoeConfig& config) {
  if (options.overlap_chunks == "auto") {
    config.overlap_chunks = 0;
  } else {
    std::int64_t chunks = 0;
    const std::string& text = options.overlap_chunks;
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), chunks);
    if (ec != std::errc() || end != text.data() + text.size() || chunks < 1 || chunks > kMaxOverlapChunks) {
      throw UsageError("--overlap-chunks '" + text + "' is not a number in 1..64 or auto");
    }
    config.overlap_chunks = chunks;
  }
  const auto exchange = parse_exchange_kind(options.exchange);
  if (!exchange) throw UsageError("--exchange '" + options.exchange + "' is not one of: variable, padded");
  config.exchange = *exchange;
  const auto wire = parse_wire_format(options.wire);
  if (!wire) throw UsageError("--wire '" + options.wire + "' is not one of: fp32, bf16");
  config.wire = *wire;
  config.check_finite = options.check_finite;
  if (!(options.watchdog_seconds >= 0) || !std::isfinite(options.watchdog_seconds)) {
    throw UsageError("--watchdog-seconds must be a finite number >= 0");
  }
}

void apply_watchdog(const ExecutionOptions& options, comm::Communicator& world) {
  world.set_timeout(options.watchdog_seconds);
}

}  // namespace moe::apps
