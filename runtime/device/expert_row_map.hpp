// Where each received row of chunk c sits in expert order, from the dispatch plan: the map the
// device path's ToExpertOrderOp / FromExpertOrderOp read (runtime/device/permute_ops.hpp). The same
// block walk as the host's to_expert_order (for_each_expert_block, runtime/dispatch_plan.hpp).
// Host code, no CUDA: tested in the host suite.
#pragma once

#include <cstdint>
#include <span>

#include "runtime/dispatch_plan.hpp"

namespace moe::device {

// expert_row[r] for r in [0, plan.chunk_recv_rows(c)): the expert-order row of the chunk's r-th
// received row.
inline void expert_row_map(const DispatchPlan& plan, int c, std::span<std::int64_t> expert_row) {
  const std::int64_t first = plan.chunk_recv_begin(c);
  for_each_expert_block(plan, c, [&](std::int64_t recv_row, std::int64_t to_row, std::int64_t rows) {
    for (std::int64_t r = 0; r < rows; ++r) expert_row[static_cast<std::size_t>(recv_row - first + r)] = to_row + r;
  });
}

}  // namespace moe::device
