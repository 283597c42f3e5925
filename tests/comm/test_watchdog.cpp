// The watchdog's host parts, one process, no MPI job: the diagnostic's text, WatchdogTimeout, the
// hosts of a collective's ranks, the deadline and the poll loop every backend waits with.
#include <catch2/catch.hpp>

#include <chrono>
#include <string>
#include <vector>

#include "comm/watchdog.hpp"

namespace {

using moe::comm::WatchdogAction;
using moe::comm::WatchdogDeadline;
using moe::comm::WatchdogReport;
using Clock = std::chrono::steady_clock;

WatchdogReport sample_report() {
  WatchdogReport r;
  r.operation = "the pairwise exchange";
  r.timeout_seconds = 2;
  r.rank = 0;
  r.size = 3;
  r.world_rank = 4;
  r.host = "node1";
  r.layer = "layers.0.moe";
  r.call = 62;
  r.phase = "count exchange";
  r.silent_ranks = {2, 1};
  r.peers = "no data yet from rank 2 (host node2); ranks not reached yet: 1 (host node1)";
  return r;
}

}  // namespace

TEST_CASE("the watchdog's diagnostic names where, what and whom, and what happens next",
          "[watchdog]") {
  const WatchdogReport r = sample_report();
  const std::string head =
      "moe-ep watchdog: the pairwise exchange did not complete within 2.0 s on rank 0 of 3 (world "
      "rank 4, host node1), layer 'layers.0.moe' call 62 phase 'count exchange'; no data yet from "
      "rank 2 (host node2); ranks not reached yet: 1 (host node1). ";
  CHECK(moe::comm::watchdog_message(r, WatchdogAction::abort_job) == head + "Aborting the job.");
  CHECK(moe::comm::watchdog_message(r, WatchdogAction::throw_error) ==
        head + "The operation was abandoned and this communicator is unusable from now on.");
}

TEST_CASE("WatchdogTimeout is a CommError carrying the report", "[watchdog]") {
  try {
    moe::comm::watchdog_fire(sample_report(), WatchdogAction::throw_error);
    FAIL("watchdog_fire returned");
  } catch (const moe::comm::CommError& error) {
    const auto* timeout = dynamic_cast<const moe::comm::WatchdogTimeout*>(&error);
    REQUIRE(timeout != nullptr);
    CHECK(error.world_rank() == 4);
    CHECK(error.host() == "node1");
    CHECK(timeout->report().silent_ranks == std::vector<int>{2, 1});
    CHECK(timeout->report().phase == "count exchange");
    CHECK(std::string(error.what()) ==
          moe::comm::watchdog_message(sample_report(), WatchdogAction::throw_error));
  }
}

TEST_CASE("ranks_by_host groups runs of consecutive ranks", "[watchdog]") {
  CHECK(moe::comm::ranks_by_host({"a", "a", "b", "b"}) == "a (ranks 0-1), b (ranks 2-3)");
  CHECK(moe::comm::ranks_by_host({"a"}) == "a (rank 0)");
  CHECK(moe::comm::ranks_by_host({"a", "b", "a"}) == "a (rank 0), b (rank 1), a (rank 2)");
  CHECK(moe::comm::ranks_by_host({}).empty());
}

TEST_CASE("a deadline of 0 s never expires; a positive one does after its time", "[watchdog]") {
  const auto start = Clock::now();
  const WatchdogDeadline off(0, start);
  CHECK_FALSE(off.armed());
  CHECK_FALSE(off.expired(start + std::chrono::hours(24 * 365)));
  const WatchdogDeadline on(1.5, start);
  CHECK(on.armed());
  CHECK_FALSE(on.expired(start + std::chrono::milliseconds(1499)));
  CHECK(on.expired(start + std::chrono::milliseconds(1501)));
}

TEST_CASE("poll_until returns when the work is done, or false once the deadline passed",
          "[watchdog]") {
  SECTION("done after some polls, with and without a deadline") {
    for (const double seconds : {0.0, 60.0}) {
      int polls = 0;
      int idles = 0;
      const bool done = moe::comm::poll_until(
          WatchdogDeadline(seconds), [&] { return ++polls == 1000; }, [&] { ++idles; });
      CHECK(done);
      CHECK(polls == 1000);
      CHECK(idles == 999);
    }
  }
  SECTION("never done: expires within the bound plus a little") {
    const auto start = Clock::now();
    long polls = 0;
    const bool done = moe::comm::poll_until(
        WatchdogDeadline(0.05), [&] { return ++polls < 0; }, [] {});
    const double waited = std::chrono::duration<double>(Clock::now() - start).count();
    CHECK_FALSE(done);
    CHECK(waited >= 0.05);
    CHECK(waited < 1.0);
  }
  SECTION("polls at least once even when already expired") {
    int polls = 0;
    const WatchdogDeadline past(0.001, Clock::now() - std::chrono::seconds(1));
    CHECK(moe::comm::poll_until(past, [&] { return ++polls == 1; }, [] {}));
    CHECK(polls == 1);
  }
}
