#include "apps/trace_options.hpp"

#include <cstdio>

#include "apps/mpi_program.hpp"
#include "runtime/trace.hpp"
#include "runtime/trace_file.hpp"

namespace moe::apps {
namespace {

// The calling thread, each layer's communication thread, and room for a few layers more.
constexpr int kTracedThreads = 8;

}  // namespace

void add_trace_options(boost::program_options::options_description& options, TraceOptions& out) {
  options.add_options()
      ("trace", boost::program_options::value(&out.path),
       "write a Chrome/Perfetto timeline of every rank's phases to this JSON file "
       "(open it in ui.perfetto.dev or chrome://tracing)")
      ("trace-events", boost::program_options::value(&out.events_per_thread)->default_value(out.events_per_thread),
       "events reserved per thread for --trace; further events are dropped and counted");
}

void finish_trace_options(const TraceOptions& options) {
  if (options.events_per_thread < 1) throw UsageError("--trace-events must be >= 1");
}

void start_trace(const TraceOptions& options, comm::Communicator& world) {
  if (options.path.empty()) return;
  trace::check_trace_path(world, options.path);
  trace::start(static_cast<std::size_t>(options.events_per_thread), kTracedThreads);
}

void finish_trace(const TraceOptions& options, comm::Communicator& world, const char* program) {
  if (options.path.empty()) return;
  const trace::TraceSummary s = trace::write_trace(world, options.path);
  if (world.rank() != 0) return;
  std::fprintf(stderr, "%s: trace %s: %lld events of %d ranks, clocks aligned within %.1f us\n", program,
               options.path.c_str(), static_cast<long long>(s.events), world.size(), s.max_offset_error_us);
  if (s.dropped > 0) {
    std::fprintf(stderr, "%s: warning: the trace dropped %lld events (buffers full): raise --trace-events\n",
                 program, static_cast<long long>(s.dropped));
  }
}

}  // namespace moe::apps
