// overlap_chunks = auto (SPEC.md section 8): the chunk count chosen from the timings of a first
// forward run with one chunk. Written once for the two places that pipeline exchanges, the
// Dispatcher (runtime/dispatcher.hpp) and the device layer (runtime/device/device_layer.hpp). Each
// gathers every rank's timings in its statistics' allgather and passes the same numbers here, so
// every rank chooses the same count.
#pragma once

#include <cstdint>
#include <span>

namespace moe {

// One rank's seconds in the first forward.
struct ChunkTimings {
  double exchange = 0;  // inside the two exchanges together
  double dispatch = 0;  // the dispatch exchange alone
  double back = 0;      // the return exchange alone
  double experts = 0;   // the experts phase
};

struct AutoChunkInputs {
  std::span<const ChunkTimings> ranks;  // every rank's, in rank order
  // The two exchanges were timed apart on the path that made them (dispatch and back are
  // transfers, not waits for a thread that ran them): their least values, summed, bound the
  // transfer.
  bool exchanges_timed_apart = false;
  double empty_exchange_seconds = 0;  // λ: the fixed cost of one exchange, the same on every rank
  std::int64_t kept_rows = 0;         // assignments kept, over the whole group
  std::int64_t num_experts = 0;
  int group_size = 1;
};

// The chunk count for the next forwards: 1 when there is little to hide, else near
// sqrt(min(X, K) / (2λ)) for exchange time X and compute time K, at most 16 and at most what keeps
// 256 rows per expert GEMM.
int choose_auto_chunks(const AutoChunkInputs& in);

}  // namespace moe
