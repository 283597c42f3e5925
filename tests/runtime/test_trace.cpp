// The trace recorder (runtime/trace.hpp): off records nothing; on, each thread has its lane; full
// lanes and threads beyond the lanes drop events and count them.
#include <catch2/catch.hpp>

#include <thread>

#include "runtime/stats.hpp"
#include "runtime/trace.hpp"

using namespace moe;

TEST_CASE("a recorder that is off records nothing", "[trace]") {
  CHECK_FALSE(trace::on());
  trace::record("x", "test", trace::Clock::now(), trace::Clock::now());
  const trace::Recording r = trace::stop();
  CHECK(r.threads.empty());
  CHECK(r.dropped == 0);
}

TEST_CASE("each thread records to its own lane, named", "[trace]") {
  trace::start(8, 2);
  REQUIRE(trace::on());
  std::array<double, kNumPhases> seconds{};
  {
    PhaseTimer timer(seconds, "forward");
    timer.lap(Phase::route);
    timer.lap(Phase::experts, 2);
  }
  std::thread([] {
    trace::name_thread("worker");
    const trace::Span span("work", "test");
  }).join();
  const trace::Recording r = trace::stop();
  CHECK_FALSE(trace::on());
  REQUIRE(r.threads.size() == 2);
  CHECK(std::string(r.threads[0].thread_name) == "main");
  REQUIRE(r.threads[0].events.size() == 2);
  CHECK(std::string(r.threads[0].events[0].name) == "route");
  CHECK(std::string(r.threads[0].events[0].category) == "forward");
  CHECK(r.threads[0].events[1].chunk == 2);
  CHECK(r.threads[0].events[0].end == r.threads[0].events[1].start);  // laps tile the time
  CHECK(std::string(r.threads[1].thread_name) == "worker");
  REQUIRE(r.threads[1].events.size() == 1);
  CHECK(std::string(r.threads[1].events[0].name) == "work");
  CHECK(r.dropped == 0);
}

TEST_CASE("full lanes and threads beyond the lanes drop events and count them", "[trace]") {
  trace::start(3, 1);
  const auto now = trace::Clock::now();
  for (int i = 0; i < 5; ++i) trace::record("e", "test", now, now);
  std::thread([&] { trace::record("e", "test", now, now); }).join();  // no lane left
  const trace::Recording r = trace::stop();
  REQUIRE(r.threads.size() == 1);
  CHECK(r.threads[0].events.size() == 3);
  CHECK(r.dropped == 3);
  // A new recording starts empty, and the thread gets a lane in it again.
  trace::start(3, 1);
  trace::record("e", "test", now, now);
  const trace::Recording again = trace::stop();
  REQUIRE(again.threads.size() == 1);
  CHECK(again.threads[0].events.size() == 1);
}
