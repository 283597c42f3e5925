// Moving rows between the layouts of one forward pass, all driven by the dispatch plan:
//   token order  --gather-->  send order (by destination rank, local expert, slot)
//   received order (by source rank, local expert)  <--regroup-->  expert order (by local expert,
//   source rank), which the expert GEMMs need
//   send order  --combine-->  token order, weighted sum over each token's kept choices
#pragma once

#include <cstdint>
#include <span>

#include "runtime/dispatch_plan.hpp"

namespace moe {

// send[i] = x[plan.send_token[i]] for every send row i; rows are `width` floats.
void gather_rows(const DispatchPlan& plan, std::span<const float> x, std::int64_t width,
                 std::span<float> send);

// Received rows (source-major) into expert-major order, and back (`to_expert` false).
void regroup_rows(const DispatchPlan& plan, std::span<const float> from, std::int64_t width,
                  std::span<float> to, bool to_expert);

// y[t] = Σ over kept choices j (in order) of weight[t*k+j] * back[plan.send_row[t*k+j]];
// a token with every choice dropped gets zeros.
void combine_rows(const DispatchPlan& plan, std::span<const float> weight,
                  std::span<const float> back, std::int64_t width, std::span<float> y);

// Backward of combine_rows: d_out[row] = weight * dy[t] for every kept (t, j) (send order), and
// d_weight[t*k+j] = dy[t]·back[row], zero for a dropped assignment.
void combine_rows_backward(const DispatchPlan& plan, std::span<const float> weight,
                           std::span<const float> back, std::span<const float> dy,
                           std::int64_t width, std::span<float> d_out, std::span<float> d_weight);

// Backward of gather_rows: dx[t] = Σ over kept choices j (in order) of d_send[send_row[t*k+j]];
// overwrites dx, zero for a token with every choice dropped.
void gather_rows_backward(const DispatchPlan& plan, std::span<const float> d_send,
                          std::int64_t width, std::span<float> dx);

}  // namespace moe
