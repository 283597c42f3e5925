#include "runtime/trace.hpp"

#include <algorithm>
#include <memory>
#include <stdexcept>

namespace moe::trace {

class Recorder {
 public:
  struct Lane {
    const char* thread_name = "";
    std::vector<Event> events;  // capacity reserved up front; never grows
    std::int64_t dropped = 0;   // written by the lane's thread only
  };

  Recorder(std::size_t events_per_thread, int max_threads, std::uint64_t generation)
      : lanes_(static_cast<std::size_t>(max_threads)), generation_(generation), started_(Clock::now()) {
    for (Lane& lane : lanes_) lane.events.reserve(events_per_thread);
  }

  std::uint64_t generation() const { return generation_; }

  // A lane for a thread's first event; nullptr when every lane is taken.
  Lane* claim(const char* thread_name) {
    const std::size_t i = next_lane_.fetch_add(1, std::memory_order_relaxed);
    if (i >= lanes_.size()) return nullptr;
    lanes_[i].thread_name = thread_name;
    return &lanes_[i];
  }

  void drop_laneless() { laneless_dropped_.fetch_add(1, std::memory_order_relaxed); }

  Recording take() {
    Recording out;
    out.started = started_;
    out.dropped = laneless_dropped_.load();
    const std::size_t used = std::min(next_lane_.load(), lanes_.size());
    for (std::size_t i = 0; i < used; ++i) {
      out.dropped += lanes_[i].dropped;
      out.threads.push_back({lanes_[i].thread_name, std::move(lanes_[i].events)});
    }
    return out;
  }

 private:
  std::vector<Lane> lanes_;
  std::atomic<std::size_t> next_lane_{0};
  std::atomic<std::int64_t> laneless_dropped_{0};
  std::uint64_t generation_;
  Clock::time_point started_;
};

namespace {

std::unique_ptr<Recorder> owned;  // the recorder `detail::active` points to while on
std::uint64_t generations = 0;    // one per start(), so a thread never writes to an older lane

// The calling thread's lane in the recording of `generation` (a thread keeps its lane until the
// next recording starts).
struct ThreadLane {
  std::uint64_t generation = 0;
  Recorder::Lane* lane = nullptr;
};
thread_local ThreadLane this_thread_lane;
thread_local const char* this_thread_name = "main";

}  // namespace

namespace detail {

std::atomic<Recorder*> active{nullptr};

void record(Recorder& recorder, const Event& event) {
  ThreadLane& mine = this_thread_lane;
  if (mine.generation != recorder.generation()) {
    mine.generation = recorder.generation();
    mine.lane = recorder.claim(this_thread_name);
  }
  if (mine.lane == nullptr) {
    recorder.drop_laneless();
  } else if (mine.lane->events.size() == mine.lane->events.capacity()) {
    ++mine.lane->dropped;
  } else {
    mine.lane->events.push_back(event);  // within the reserved capacity: no allocation
  }
}

}  // namespace detail

void start(std::size_t events_per_thread, int max_threads) {
  if (owned) throw std::logic_error("trace::start: already recording");
  if (max_threads < 1) throw std::invalid_argument("trace::start: max_threads must be >= 1");
  owned = std::make_unique<Recorder>(events_per_thread, max_threads, ++generations);
  detail::active.store(owned.get(), std::memory_order_release);
}

Recording stop() {
  if (!owned) return {};
  detail::active.store(nullptr, std::memory_order_release);
  Recording out = owned->take();
  owned.reset();
  return out;
}

void name_thread(const char* name) { this_thread_name = name; }

}  // namespace moe::trace
