// One Chrome / Perfetto trace for a whole job: every rank's recording (runtime/trace.hpp) on one
// time axis, gathered by rank 0 into one JSON file (the trace-event format: "X" complete events
// with ts and dur in microseconds, "M" metadata naming each rank's process and threads). Opens in
// ui.perfetto.dev or chrome://tracing.
//
// Clocks are aligned by ping-pong: rank 0 sends a message to each rank in turn, which answers with
// its clock's reading on arrival; the reading happened between rank 0's send and its receipt of
// the answer, so the rank's offset is its reading minus the midpoint, within half the round trip.
// The round with the shortest round trip of 8 to 64 (more while it keeps improving) is kept, and
// each rank's offset error is written to the file with the offset.
#pragma once

#include <cstdint>
#include <string>

#include "comm/communicator.hpp"

namespace moe::trace {

// Collective: rank 0 creates (empties) `path` now, so an unwritable path is the same error on
// every rank before any work is done.
void check_trace_path(comm::Communicator& world, const std::string& path);

struct TraceSummary {
  std::int64_t events = 0;           // complete events in the file, all ranks
  std::int64_t dropped = 0;          // events lost to full buffers, all ranks
  double max_offset_error_us = 0;    // the largest clock-offset error of any rank
};

// Collective over `world`, on which every rank called trace::start: stops recording, aligns the
// clocks, gathers every rank's events and writes them to `path` on rank 0. Failing to write is
// the same error on every rank. The summary holds on every rank.
TraceSummary write_trace(comm::Communicator& world, const std::string& path);

}  // namespace moe::trace
