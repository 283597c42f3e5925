#include "comm/watchdog.hpp"

#include <mpi.h>

#include <cstdio>
#include <cstdlib>
#include <utility>

namespace moe::comm {

WatchdogReport make_watchdog_report(const char* operation, double timeout_seconds, int rank, int size,
                                    int world_rank, const std::string& host,
                                    const OperationContext& context) {
  WatchdogReport r;
  r.operation = operation;
  r.timeout_seconds = timeout_seconds;
  r.rank = rank;
  r.size = size;
  r.world_rank = world_rank;
  r.host = host;
  r.layer = context.layer;
  r.call = context.call;
  r.phase = context.phase;
  return r;
}

std::string watchdog_message(const WatchdogReport& report, WatchdogAction action) {
  char seconds[32];
  std::snprintf(seconds, sizeof seconds, "%.1f", report.timeout_seconds);
  std::string text = "moe-ep watchdog: " + report.operation + " did not complete within " +
                     seconds + " s on rank " + std::to_string(report.rank) + " of " +
                     std::to_string(report.size) + " (world rank " +
                     std::to_string(report.world_rank) + ", host " + report.host + "), layer '" +
                     report.layer + "' call " + std::to_string(report.call) + " phase '" +
                     report.phase + "'; " + report.peers + ". ";
  text += action == WatchdogAction::abort_job
              ? "Aborting the job."
              : "The operation was abandoned and this communicator is unusable from now on.";
  return text;
}

WatchdogTimeout::WatchdogTimeout(WatchdogReport report)
    : CommError(watchdog_message(report, WatchdogAction::throw_error), report.world_rank,
                report.host),
      report_(std::move(report)) {}

void watchdog_fire(const WatchdogReport& report, WatchdogAction action) {
  if (action == WatchdogAction::throw_error) throw WatchdogTimeout(report);
  const std::string text = watchdog_message(report, action) + "\n";
  // One write, so that the lines of several ranks do not interleave mid-line.
  std::fputs(text.c_str(), stderr);
  std::fflush(stderr);
  MPI_Abort(MPI_COMM_WORLD, watchdog_exit_code);
  std::abort();  // MPI_Abort is not declared noreturn
}

std::string ranks_by_host(const std::vector<std::string>& hosts) {
  std::string text;
  const std::size_t size = hosts.size();
  for (std::size_t first = 0; first < size;) {
    std::size_t last = first;
    while (last + 1 < size && hosts[last + 1] == hosts[first]) ++last;
    if (!text.empty()) text += ", ";
    text += hosts[first];
    text += first == last ? " (rank " + std::to_string(first) + ")"
                          : " (ranks " + std::to_string(first) + "-" + std::to_string(last) + ")";
    first = last + 1;
  }
  return text;
}

WatchdogDeadline::WatchdogDeadline(double seconds, Clock::time_point start)
    : start_(start),
      end_(start + std::chrono::duration_cast<Clock::duration>(
                       std::chrono::duration<double>(seconds > 0 ? seconds : 0))),
      armed_(seconds > 0) {}

}  // namespace moe::comm
