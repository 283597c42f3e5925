#include "runtime/trace_file.hpp"

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <vector>

#include "runtime/error.hpp"
#include "runtime/trace.hpp"

namespace moe::trace {
namespace {

using nlohmann::json;

// Ping-pong rounds per rank: the shortest round trip bounds the offset's error. At least
// kMinRounds; then more while the best keeps improving (on a loaded machine a descheduled rank
// makes most round trips long), until kPatience rounds in a row bring nothing better or
// kMaxRounds are done.
constexpr int kMinRounds = 8, kPatience = 8, kMaxRounds = 64;

// Thread ids of rank r are (r + 1) * kTidsPerRank + lane (the lanes of trace::start).
constexpr std::int64_t kTidsPerRank = 1000;

std::int64_t nanoseconds(Clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}

// Every rank's clock minus rank 0's, and the error bound of each, in ns (zero for rank 0), known
// on every rank.
struct Offsets {
  std::vector<std::int64_t> offset, error;
};

// One message of 8 bytes from `from` to `to` through an alltoallv in which no one else sends.
void send_one(comm::Communicator& world, int from, int to, std::int64_t& value) {
  const auto size = static_cast<std::size_t>(world.size());
  std::vector<std::size_t> out(size, 0), in(size, 0);
  if (world.rank() == from) out[static_cast<std::size_t>(to)] = sizeof value;
  if (world.rank() == to) in[static_cast<std::size_t>(from)] = sizeof value;
  std::int64_t received = 0;
  world.alltoallv(reinterpret_cast<const std::byte*>(&value), out,
                  reinterpret_cast<std::byte*>(&received), in);
  if (world.rank() == to) value = received;
}

// Rank 0 tells every other rank whether another round follows; returns what it said.
bool another_round(comm::Communicator& world, bool go_on) {
  const auto size = static_cast<std::size_t>(world.size());
  std::vector<std::size_t> out(size, 0), in(size, 0);
  if (world.rank() == 0) {
    for (std::size_t p = 1; p < size; ++p) out[p] = sizeof(std::int64_t);
  } else {
    in[0] = sizeof(std::int64_t);
  }
  const std::vector<std::int64_t> flags(size, go_on ? 1 : 0);
  std::int64_t received = flags[0];
  world.alltoallv(reinterpret_cast<const std::byte*>(flags.data()), out,
                  reinterpret_cast<std::byte*>(&received), in);
  return received != 0;
}

Offsets measure_offsets(comm::Communicator& world) {
  const int size = world.size(), rank = world.rank();
  // [offset of each rank, error of each rank], filled on rank 0, then summed to everyone.
  std::vector<std::int64_t> found(2 * static_cast<std::size_t>(size), 0);
  for (int r = 1; r < size; ++r) {
    std::int64_t best_trip = -1;
    int rounds = 0, since_best = 0;
    while (true) {
      const bool go_on = (rounds < kMinRounds || since_best < kPatience) && rounds < kMaxRounds;
      const auto sent = Clock::now();
      if (!another_round(world, rank == 0 && go_on)) break;  // also the ping to rank r
      std::int64_t value = rank == r ? nanoseconds(Clock::now()) : 0;
      send_one(world, r, 0, value);  // the answer: r's reading
      ++rounds;
      if (rank != 0) continue;
      const std::int64_t trip = nanoseconds(Clock::now()) - nanoseconds(sent);
      if (best_trip >= 0 && trip >= best_trip) {
        ++since_best;
        continue;
      }
      best_trip = trip;
      since_best = 0;
      found[static_cast<std::size_t>(r)] = value - (nanoseconds(sent) + trip / 2);
      found[static_cast<std::size_t>(size + r)] = (trip + 1) / 2;
    }
  }
  world.allreduce(std::span<std::int64_t>(found), comm::ReduceOp::sum);
  Offsets out;
  out.offset.assign(found.begin(), found.begin() + size);
  out.error.assign(found.begin() + size, found.end());
  return out;
}

// This rank's events as trace-event JSON, on rank 0's time axis starting at `origin_ns` (rank 0's
// clock), in the order each thread recorded them.
json rank_events(const Recording& recording, int rank, const std::string& host,
                 std::int64_t offset_ns, std::int64_t origin_ns) {
  const auto micros = [&](Clock::time_point t) {
    return static_cast<double>(nanoseconds(t) - offset_ns - origin_ns) / 1e3;
  };
  // Perfetto treats pid 0 and tid 0 as the kernel's idle task, and tids as unique across
  // processes (as Linux does): so pid = rank + 1, and each thread's tid is unique in the job.
  const int pid = rank + 1;
  json events = json::array();
  events.push_back({{"ph", "M"}, {"pid", pid}, {"name", "process_name"},
                    {"args", {{"name", "rank " + std::to_string(rank) + " (" + host + ")"}}}});
  events.push_back({{"ph", "M"}, {"pid", pid}, {"name", "process_sort_index"},
                    {"args", {{"sort_index", rank}}}});
  for (std::size_t lane = 0; lane < recording.threads.size(); ++lane) {
    const ThreadEvents& thread = recording.threads[lane];
    const std::int64_t tid = static_cast<std::int64_t>(pid) * kTidsPerRank + static_cast<std::int64_t>(lane);
    events.push_back({{"ph", "M"}, {"pid", pid}, {"tid", tid}, {"name", "thread_name"},
                      {"args", {{"name", thread.thread_name}}}});
    for (const Event& e : thread.events) {
      json event = {{"ph", "X"}, {"pid", pid}, {"tid", tid}, {"name", e.name}, {"cat", e.category},
                    {"ts", micros(e.start)},
                    {"dur", static_cast<double>(nanoseconds(e.end) - nanoseconds(e.start)) / 1e3}};
      if (e.chunk >= 0) event["args"] = {{"chunk", e.chunk}};
      events.push_back(std::move(event));
    }
  }
  return events;
}

// Every rank's text, on rank 0 (in rank order); empty elsewhere.
std::vector<std::string> gather_to_root(comm::Communicator& world, const std::string& mine) {
  const auto size = static_cast<std::size_t>(world.size());
  std::vector<std::int64_t> lengths(size);
  const auto length = static_cast<std::int64_t>(mine.size());
  world.allgather(reinterpret_cast<const std::byte*>(&length), reinterpret_cast<std::byte*>(lengths.data()),
                  sizeof length);
  std::vector<std::size_t> out(size, 0), in(size, 0);
  out[0] = mine.size();
  if (world.rank() == 0) {
    for (std::size_t r = 0; r < size; ++r) in[r] = static_cast<std::size_t>(lengths[r]);
  }
  const std::int64_t total = world.rank() == 0 ? std::accumulate(lengths.begin(), lengths.end(), std::int64_t{0}) : 0;
  std::string all(static_cast<std::size_t>(total), '\0');
  world.alltoallv(reinterpret_cast<const std::byte*>(mine.data()), out,
                  reinterpret_cast<std::byte*>(all.data()), in);
  std::vector<std::string> texts;
  if (world.rank() != 0) return texts;
  std::size_t at = 0;
  for (std::size_t r = 0; r < size; ++r) {
    texts.push_back(all.substr(at, in[r]));
    at += in[r];
  }
  return texts;
}

}  // namespace

void check_trace_path(comm::Communicator& world, const std::string& path) {
  collectively(world, [&] {
    if (world.rank() != 0) return;
    std::ofstream file(path, std::ios::trunc);
    if (!file) throw Error("--trace: cannot write " + path);
  });
}

TraceSummary write_trace(comm::Communicator& world, const std::string& path) {
  const Recording recording = stop();
  const int rank = world.rank();
  const Offsets offsets = measure_offsets(world);
  // Time 0 of the file: the earliest start of recording, on rank 0's clock (no event precedes it).
  std::int64_t origin[1] = {nanoseconds(recording.started) - offsets.offset[static_cast<std::size_t>(rank)]};
  world.allreduce(std::span<std::int64_t>(origin), comm::ReduceOp::min);

  std::int64_t counts[2] = {0, recording.dropped};
  for (const ThreadEvents& thread : recording.threads) counts[0] += static_cast<std::int64_t>(thread.events.size());
  const json mine = {{"events", rank_events(recording, rank, world.host(),
                                            offsets.offset[static_cast<std::size_t>(rank)], origin[0])},
                     {"host", world.host()}, {"dropped", recording.dropped}, {"recorded", counts[0]}};
  const std::vector<std::string> texts = gather_to_root(world, mine.dump());
  world.allreduce(std::span<std::int64_t>(counts), comm::ReduceOp::sum);

  collectively(world, [&] {
    if (rank != 0) return;
    json file = {{"traceEvents", json::array()}, {"displayTimeUnit", "ms"}};
    json ranks = json::array();
    for (std::size_t r = 0; r < texts.size(); ++r) {
      json part = json::parse(texts[r]);
      for (json& e : part["events"]) file["traceEvents"].push_back(std::move(e));
      ranks.push_back({{"rank", r}, {"pid", r + 1}, {"host", part["host"]},
                       {"clock_offset_us", static_cast<double>(offsets.offset[r]) / 1e3},
                       {"clock_offset_error_us", static_cast<double>(offsets.error[r]) / 1e3},
                       {"events", part["recorded"]}, {"dropped_events", part["dropped"]}});
    }
    file["otherData"] = {
        {"clock_alignment", "ping-pong with rank 0, shortest of " + std::to_string(kMinRounds) + " to " +
                                std::to_string(kMaxRounds) + " round trips; error = half that round trip"},
        {"ranks", ranks}};
    std::ofstream out(path, std::ios::trunc);
    out << file.dump() << "\n";
    out.close();
    if (!out) throw Error("--trace: cannot write " + path);
  });

  TraceSummary summary;
  summary.events = counts[0];
  summary.dropped = counts[1];
  summary.max_offset_error_us =
      static_cast<double>(*std::max_element(offsets.error.begin(), offsets.error.end())) / 1e3;
  return summary;
}

}  // namespace moe::trace
