// The per-peer byte counts of one chunk's exchange, read from the dispatch plan: what the device
// path hands NCCL's grouped send/recv (runtime/device/device_exchange.hpp). Rows of a chunk are
// contiguous in send and receive order and packed by peer (runtime/dispatch_plan.hpp), so the
// counts alone place every block. Host code, no CUDA: tested in the host suite.
#pragma once

#include <cstddef>
#include <span>

#include "runtime/dispatch_plan.hpp"

namespace moe::device {

// to_peer[p]: bytes of chunk c this rank sends to rank p on the way out (its send rows for p);
// from_peer[s]: bytes it receives from rank s. The way back swaps the two. Both spans have
// plan.ep_size entries.
inline void chunk_exchange_bytes(const DispatchPlan& plan, int c, std::size_t row_bytes,
                                 std::span<std::size_t> to_peer, std::span<std::size_t> from_peer) {
  for (int p = 0; p < plan.ep_size; ++p) {
    to_peer[static_cast<std::size_t>(p)] = static_cast<std::size_t>(plan.send_rows(c, p)) * row_bytes;
    from_peer[static_cast<std::size_t>(p)] = static_cast<std::size_t>(plan.recv_rows(c, p)) * row_bytes;
  }
}

}  // namespace moe::device
