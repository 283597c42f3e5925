// A timeline of this process's phases, for a Chrome / Perfetto trace (runtime/trace_file.hpp
// aligns the ranks' clocks and writes one file for the job).
//
// Off unless start() was called: then every record site costs one relaxed atomic load and a
// branch. When on, each thread writes to a lane of its own, reserved in full by start(), so
// recording never allocates and never takes a lock. A full lane, or a thread beyond the lanes
// reserved, drops the event and counts it: the file says how many were dropped, so a truncated
// timeline is never mistaken for a complete one.
//
// Names and categories are pointers, not copies: pass string literals (or strings that outlive the
// recording).
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace moe::trace {

using Clock = std::chrono::steady_clock;

struct Event {
  const char* name = "";
  const char* category = "";
  Clock::time_point start, end;
  std::int32_t chunk = -1;  // the pipeline chunk, or -1 when the event is not a chunk's
};

// The events one thread recorded, in the order it recorded them (hence by end time).
struct ThreadEvents {
  const char* thread_name = "";
  std::vector<Event> events;
};

struct Recording {
  std::vector<ThreadEvents> threads;  // in the order the threads first recorded
  std::int64_t dropped = 0;           // events lost to full lanes or to threads beyond the lanes
  Clock::time_point started;          // when start() was called
};

class Recorder;

namespace detail {
extern std::atomic<Recorder*> active;
void record(Recorder& recorder, const Event& event);
}  // namespace detail

// True while recording. Record sites test this first, so tracing costs nothing measurable off.
inline bool on() { return detail::active.load(std::memory_order_relaxed) != nullptr; }

// Starts recording in this process, with room for `events_per_thread` events on each of at most
// `max_threads` threads, all reserved now. Throws std::logic_error when already recording.
void start(std::size_t events_per_thread, int max_threads);

// Stops recording and hands over what was recorded. Call when no other thread is recording (the
// layer's communication threads are idle between calls). Returns an empty recording when off.
Recording stop();

// Records one event of the calling thread, when on.
inline void record(const char* name, const char* category, Clock::time_point start,
                   Clock::time_point end, int chunk = -1) {
  if (Recorder* r = detail::active.load(std::memory_order_relaxed)) {
    detail::record(*r, {name, category, start, end, chunk});
  }
}

// Names the calling thread in the trace ("main" unless named). Takes effect for a recording the
// thread has not yet written to.
void name_thread(const char* name);

// Records the time from its construction to its destruction as one event (when on at both ends).
class Span {
 public:
  Span(const char* name, const char* category)
      : name_(name), category_(category), start_(on() ? Clock::now() : Clock::time_point{}) {}
  ~Span() {
    if (start_ != Clock::time_point{} && on()) record(name_, category_, start_, Clock::now());
  }
  Span(const Span&) = delete;
  Span& operator=(const Span&) = delete;

 private:
  const char* name_;
  const char* category_;
  Clock::time_point start_;
};

}  // namespace moe::trace
