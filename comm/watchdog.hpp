// The watchdog's parts shared by every backend (host code, no GPU needed): the deadline and the
// poll loop that waits against it, the diagnostic a rank prints or throws when an operation does
// not complete in time, and WatchdogTimeout, the exception an embedding trainer catches when it
// chose WatchdogAction::throw_error (comm/communicator.hpp).
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "comm/comm_error.hpp"
#include "comm/communicator.hpp"

namespace moe::comm {

// Exit code of a job the watchdog aborts (WatchdogAction::abort_job).
inline constexpr int watchdog_exit_code = 124;

// What one rank waited for when its watchdog fired.
struct WatchdogReport {
  std::string operation;          // e.g. "the pairwise exchange", "MPI_Iallreduce", "ncclAllReduce"
  double timeout_seconds = 0;
  int rank = 0;                   // in the communicator that timed out
  int size = 0;
  int world_rank = -1;            // in MPI_COMM_WORLD (-1 when MPI is not running)
  std::string host;
  std::string layer;              // the OperationContext at the time
  std::int64_t call = 0;
  std::string phase;
  // The ranks (of the communicator) this rank has not heard from, when the operation can tell
  // (point-to-point exchanges); empty when it cannot (MPI and NCCL collectives).
  std::vector<int> silent_ranks;
  // The same in words, with each rank's host; or, for a collective, where its ranks are.
  std::string peers;
};

// A report of `operation` on the calling rank, with the context the layer set; the peers are
// for the caller to fill.
WatchdogReport make_watchdog_report(const char* operation, double timeout_seconds, int rank, int size,
                                    int world_rank, const std::string& host,
                                    const OperationContext& context);

// The one-line diagnostic: "moe-ep watchdog: <operation> did not complete within <t> s on rank r
// of n (world rank w, host h), layer 'l' call c phase 'p'; <peers>. <what happens next>."
std::string watchdog_message(const WatchdogReport& report, WatchdogAction action);

// Thrown instead of aborting the job under WatchdogAction::throw_error. The communicator it came
// from is unusable afterwards (every later operation on it throws CommError at once).
class WatchdogTimeout : public CommError {
 public:
  explicit WatchdogTimeout(WatchdogReport report);
  const WatchdogReport& report() const noexcept { return report_; }

 private:
  WatchdogReport report_;
};

// abort_job: prints the diagnostic to stderr and ends the whole job (MPI_Abort with
// watchdog_exit_code, then std::abort). throw_error: throws WatchdogTimeout. The backend must
// already have done what throw_error promises (see Communicator::set_watchdog_action).
[[noreturn]] void watchdog_fire(const WatchdogReport& report, WatchdogAction action);

// The hosts of a communicator's ranks (entry r: rank r's host) as runs of consecutive ranks:
// "node1 (ranks 0-1), node2 (rank 2)"; for a collective's diagnostic, which cannot name its
// silent peers.
std::string ranks_by_host(const std::vector<std::string>& hosts);

// A deadline `seconds` after `start`; 0 seconds means none (never expires).
class WatchdogDeadline {
 public:
  using Clock = std::chrono::steady_clock;
  explicit WatchdogDeadline(double seconds, Clock::time_point start = Clock::now());
  bool armed() const noexcept { return armed_; }
  bool expired(Clock::time_point now = Clock::now()) const noexcept { return armed_ && now > end_; }
  Clock::time_point start() const noexcept { return start_; }

 private:
  Clock::time_point start_;
  Clock::time_point end_;
  bool armed_;
};

// Calls `poll` until it returns true (done) or the deadline passes, calling `idle` between polls
// (a sleep, a yield, or nothing to spin). Returns true when done, false on expiry. The clock is
// read every `clock_every` polls (reading it costs more than a poll of an idle MPI request), so
// expiry is noticed within that many polls; `poll` runs at least once, even past the deadline.
template <class Poll, class Idle>
bool poll_until(const WatchdogDeadline& deadline, Poll&& poll, Idle&& idle, long clock_every = 64) {
  for (long polls = 0;; ++polls) {
    if (poll()) return true;
    if (deadline.armed() && polls % clock_every == 0 && deadline.expired()) return false;
    idle();
  }
}

}  // namespace moe::comm
