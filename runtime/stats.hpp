// Statistics of one forward pass (SPEC.md section 10).
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <chrono>
#include <cstdint>
#include <string_view>
#include <vector>

#include "runtime/trace.hpp"

namespace moe {

enum class Phase { route, permute, exchange, experts, exchange_back, combine };
inline constexpr std::size_t kNumPhases = 6;
inline constexpr std::array<std::string_view, kNumPhases> kPhaseNames = {
    "route", "permute", "exchange", "experts", "exchange_back", "combine"};

struct ForwardStats {
  std::int64_t total_tokens = 0;               // T over the whole group
  std::vector<std::int64_t> expert_counts;     // [E] assignments before dropping, whole group
  std::vector<std::int64_t> expert_kept;       // [E] after dropping, whole group
  std::int64_t dropped_assignments = 0;        // whole group
  std::int64_t dropped_tokens = 0;             // tokens with every assignment dropped, whole group
  std::vector<std::int64_t> bytes_sent;        // [P] payload bytes each rank sent to other ranks
                                               // (dispatch and return; rows kept local excluded)
  std::vector<std::int64_t> bytes_received;    // [P]
  // Payload that crossed between nodes (runtime/moe_layer.hpp's topology()), whole group, both
  // exchanges: bytes, and messages (non-empty blocks from a rank to a rank on another node).
  // Count exchanges are left out.
  std::int64_t internode_bytes = 0;
  std::int64_t internode_messages = 0;
  std::vector<std::int64_t> rows_to_peer;      // [P] rows this rank dispatched to each rank
  std::vector<std::int64_t> rows_from_peer;    // [P] rows this rank received from each rank
  // Spread of the load over the experts (assignments before dropping, whole group): max / mean,
  // least, and standard deviation. 1, mean and 0 when perfectly balanced.
  double load_max_over_mean = 0;
  std::int64_t load_min = 0;
  double load_std = 0;
  std::array<double, kNumPhases> phase_seconds{};  // this rank's wall time per phase
  // This rank's time computing the shared expert (part of the experts phase), which runs while
  // the dispatch exchange is in flight.
  double shared_expert_seconds = 0;
  // Where the pipeline waits (this rank; both part of the phases above): the agreement on what
  // moves before the payload (the count exchange, the padded slot count or the global capacity
  // decision; in the route phase), and the wait for the first chunk of the dispatch after the
  // shared expert, if any (the pipeline's fill; in the exchange phase, with the waits for later
  // chunks). The drain, the wait for the last returns, is the exchange_back phase.
  double count_exchange_seconds = 0;
  double fill_seconds = 0;
  // This rank's time inside the two exchanges. With overlap_chunks > 1 they run beside the
  // expert compute, so this is more than the exchange phases above, which count only waiting.
  double exchange_seconds = 0;

  void set_load_spread() {
    load_max_over_mean = load_std = 0;
    load_min = 0;
    if (expert_counts.empty()) return;
    std::int64_t most = expert_counts[0], total = 0;
    load_min = expert_counts[0];
    for (std::int64_t c : expert_counts) {
      most = std::max(most, c);
      load_min = std::min(load_min, c);
      total += c;
    }
    const double mean = static_cast<double>(total) / static_cast<double>(expert_counts.size());
    double squares = 0;
    for (std::int64_t c : expert_counts) squares += (static_cast<double>(c) - mean) * (static_cast<double>(c) - mean);
    load_std = std::sqrt(squares / static_cast<double>(expert_counts.size()));
    load_max_over_mean = mean > 0 ? static_cast<double>(most) / mean : 0;
  }

  double& seconds(Phase phase) { return phase_seconds[static_cast<std::size_t>(phase)]; }
  double seconds(Phase phase) const { return phase_seconds[static_cast<std::size_t>(phase)]; }
};

// Zeroes a set of phase times, then adds the wall time up to each lap() to that lap's phase. Each
// lap is also an event of the trace when one is being recorded (runtime/trace.hpp): named after the
// phase, in the category of its pass, so a phase is timed once for both.
class PhaseTimer {
 public:
  // `pass` ("forward", "backward"): a literal, named in the trace. `reset` = false adds to the
  // times already there (a pass timed over several calls).
  PhaseTimer(std::array<double, kNumPhases>& seconds, const char* pass, bool reset = true)
      : seconds_(seconds), pass_(pass), last_(Clock::now()) {
    if (reset) seconds_ = {};
  }
  // `chunk`: the pipeline chunk the lap belongs to, for the trace (-1: none).
  void lap(Phase phase, int chunk = -1) {
    const auto now = Clock::now();
    const auto index = static_cast<std::size_t>(phase);
    seconds_[index] += std::chrono::duration<double>(now - last_).count();
    // kPhaseNames are views of literals: data() is a lasting, terminated string.
    trace::record(kPhaseNames[index].data(), pass_, last_, now, chunk);
    last_ = now;
  }

 private:
  using Clock = trace::Clock;
  std::array<double, kNumPhases>& seconds_;
  const char* pass_;
  Clock::time_point last_;
};

}  // namespace moe
