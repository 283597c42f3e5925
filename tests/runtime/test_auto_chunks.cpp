// The overlap_chunks = auto decision (runtime/auto_chunks.hpp) on chosen timings: what the
// Dispatcher and the device layer both decide from.
#include <catch2/catch.hpp>

#include <vector>

#include "runtime/auto_chunks.hpp"

using namespace moe;

namespace {

// 8 experts over 2 ranks with 4096 rows each: the row clamp (4 local experts x 16) leaves 16.
// The result refers to `ranks`.
AutoChunkInputs inputs(const std::vector<ChunkTimings>& ranks, double lambda) {
  return {.ranks = ranks, .exchanges_timed_apart = true, .empty_exchange_seconds = lambda,
          .kept_rows = 8 * 4096, .num_experts = 8, .group_size = 2};
}

ChunkTimings both(double exchange, double experts) {
  return {.exchange = exchange, .dispatch = exchange / 2, .back = exchange / 2, .experts = experts};
}

}  // namespace

TEST_CASE("auto chunks: one chunk when there is nothing to hide") {
  // The exchange is under 5 % of the compute, or the compute under 5 % of the exchange.
  CHECK(choose_auto_chunks(inputs({both(0.0004, 0.02), both(0.0004, 0.02)}, 1e-6)) == 1);
  CHECK(choose_auto_chunks(inputs({both(0.02, 0.0009), both(0.02, 0.0009)}, 1e-6)) == 1);
  CHECK(choose_auto_chunks(inputs({both(0, 0), both(0, 0)}, 1e-6)) == 1);
}

TEST_CASE("auto chunks: near sqrt(min(X, K) / 2 lambda)") {
  // min(X, K) = 0.02, λ = 1e-4: sqrt(100) = 10.
  CHECK(choose_auto_chunks(inputs({both(0.02, 0.03), both(0.02, 0.03)}, 1e-4)) == 10);
  // min(X, K) = 0.002: sqrt(10) rounds to 3.
  CHECK(choose_auto_chunks(inputs({both(0.002, 0.03), both(0.002, 0.03)}, 1e-4)) == 3);
}

TEST_CASE("auto chunks: the least exchange and the slowest experts over ranks") {
  // X from the rank that waited least (rank 0), K from the slowest rank's experts (rank 1).
  const std::vector<ChunkTimings> ranks = {both(0.002, 0.001), both(0.05, 0.03)};
  CHECK(choose_auto_chunks(inputs(ranks, 1e-4)) == 3);
  // Timed apart, each exchange's least time is summed: 0.001 + 0.001, not either rank's 0.03.
  const std::vector<ChunkTimings> apart = {{.exchange = 0.03, .dispatch = 0.001, .back = 0.029, .experts = 0.02},
                                           {.exchange = 0.03, .dispatch = 0.029, .back = 0.001, .experts = 0.02}};
  CHECK(choose_auto_chunks(inputs(apart, 1e-4)) == 3);  // sqrt(0.002 / 2e-4) = 3.2
  AutoChunkInputs waits = inputs(apart, 1e-4);
  waits.exchanges_timed_apart = false;  // the phases were waits: only the sum of each rank counts
  CHECK(choose_auto_chunks(waits) == 10);  // sqrt(0.02 / 2e-4)
}

TEST_CASE("auto chunks: the clamps") {
  // A tiny λ asks for hundreds of chunks: at most 16.
  CHECK(choose_auto_chunks(inputs({both(0.02, 0.02), both(0.02, 0.02)}, 1e-7)) == 16);
  // λ is taken as 1 µs or more: sqrt(0.0001 / 2e-6) = 7.07, not the 70 of λ = 1e-8.
  CHECK(choose_auto_chunks(inputs({both(0.0001, 0.0001), both(0.0001, 0.0001)}, 1e-8)) == 7);
  // 256 rows per expert GEMM or more: 600 rows per expert allow 2 chunks per local expert.
  const std::vector<ChunkTimings> ranks = {both(0.02, 0.02), both(0.02, 0.02)};
  AutoChunkInputs rows = inputs(ranks, 1e-7);  // the span refers to `ranks`
  rows.kept_rows = 8 * 600;
  CHECK(choose_auto_chunks(rows) == 4 * 2);
  rows.group_size = 8;  // one local expert each
  CHECK(choose_auto_chunks(rows) == 2);
  // Under 256 rows per expert: no split at all.
  rows.kept_rows = 8 * 100;
  rows.group_size = 2;
  CHECK(choose_auto_chunks(rows) == 1);
}
