#include "apps/run_queue.hpp"

#include <cstdio>

namespace moe::apps {

double run_queue_seconds() {
  // "<ns on a cpu> <ns waiting on a run queue> <timeslices>" (Documentation/scheduler/sched-stats).
  std::FILE* f = std::fopen("/proc/thread-self/schedstat", "r");
  if (f == nullptr) return 0;
  unsigned long long running = 0, waiting = 0;
  const int got = std::fscanf(f, "%llu %llu", &running, &waiting);
  std::fclose(f);
  return got == 2 ? static_cast<double>(waiting) * 1e-9 : 0;
}

}  // namespace moe::apps
