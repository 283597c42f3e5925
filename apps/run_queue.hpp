// Time the calling thread spent ready to run but waiting for a core (the kernel's run-queue delay,
// /proc/thread-self/schedstat), so a benchmark can tell the layer's own time from the time other
// processes on a shared machine held its core.
//
// Why moe-bench needs it: on a loaded machine the wall time of compute depends on how the
// scheduler shares the core, and that depends on the pattern of the work, not only its amount.
// Measured on this 2-core machine at load 5-6: the expert compute of one step took the same CPU
// time (55-62 ms) with 1, 2 and 4 chunks, but 185-250 ms of wall time with one chunk (one long
// burst, shared with the other runnable processes) and 63-78 ms with four (short bursts after
// each wait, which the scheduler runs almost at once). A model fitted on one pattern cannot
// predict the other from the wall times; subtracting the run-queue wait leaves the time the work
// itself took.
#pragma once

namespace moe::apps {

// Seconds the calling thread has waited on a run queue since it started; 0 when the kernel does
// not report it (then every "own" time equals the wall time).
double run_queue_seconds();

}  // namespace moe::apps
