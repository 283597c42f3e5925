// --trace FILE and --trace-events N: a Chrome / Perfetto timeline of every rank
// (runtime/trace_file.hpp). Shared by moe-bench and moe-train.
//
//   TraceOptions trace;
//   add_trace_options(desc, trace);              // with the other options, before parsing
//   ... parse, notify, finish_trace_options(trace) ...
//   start_trace(trace, world);                   // collective; records from here on
//   ... the work ...
//   finish_trace(trace, world, "moe-bench");     // collective; rank 0 writes FILE and says so
#pragma once

#include <boost/program_options.hpp>
#include <cstdint>
#include <string>

#include "comm/communicator.hpp"

namespace moe::apps {

struct TraceOptions {
  std::string path;  // empty: no trace
  // Room reserved per thread (40 bytes an event). A layer's forward and backward record about
  // 25 + 4 per chunk events on the calling thread, 4 per chunk on its communication thread.
  std::int64_t events_per_thread = 32768;
};

void add_trace_options(boost::program_options::options_description& options, TraceOptions& out);

// Throws UsageError for a bad --trace-events.
void finish_trace_options(const TraceOptions& options);

// Collective. With --trace: checks that rank 0 can write the file, then starts recording.
void start_trace(const TraceOptions& options, comm::Communicator& world);

// Collective. With --trace: writes the file; rank 0 prints what it holds to stderr, with a
// warning when events were dropped.
void finish_trace(const TraceOptions& options, comm::Communicator& world, const char* program);

}  // namespace moe::apps
