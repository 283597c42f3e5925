// Moving rows between the layouts of one pass, all driven by the dispatch plan (see
// runtime/dispatch_plan.hpp for the chunk-major layouts). Rows in the send and receive layouts are
// in the wire format, `row_bytes` = width × its value size; rows in token and expert order are
// fp32.
//   token order  --gather_rows-->  send order
//   receive order  --to_expert_order / from_expert_order-->  expert order, chunk by chunk
//   send order  --combine_rows-->  token order, weighted sum over each token's kept choices
// The backward functions walk the same maps in reverse.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "runtime/dispatch_plan.hpp"
#include "runtime/wire_format.hpp"

namespace moe {

// A buffer of rows in the wire format.
struct WireRows {
  std::byte* data;
  std::int64_t width;  // values per row
  WireFormat format;
  std::size_t row_bytes() const { return static_cast<std::size_t>(width) * wire_value_bytes(format); }
  std::byte* row(std::int64_t r) const { return data + static_cast<std::size_t>(r) * row_bytes(); }
};

// send[i] = x[plan.send_token[i]] for every send row i; zeros for a padding row.
void gather_rows(const DispatchPlan& plan, std::span<const float> x, WireRows send);

// Zeros the padding rows of a send-order buffer (the padded exchange sends them too).
void zero_padding_rows(const DispatchPlan& plan, WireRows send);

// The rows of chunk c from receive order (wire) into expert order (fp32), and back.
void to_expert_order(const DispatchPlan& plan, int c, WireRows received, std::span<float> expert);
void from_expert_order(const DispatchPlan& plan, int c, std::span<const float> expert, WireRows received);

// y[t] = Σ over kept choices j (in order) of weight[t*k+j] · back[plan.send_row[t*k+j]];
// a token with every choice dropped gets zeros.
void combine_rows(const DispatchPlan& plan, std::span<const float> weight, WireRows back,
                  std::span<float> y);

// Backward of combine_rows: d_out[row] = weight · dy[t] for every kept (t, j) (send order), and
// d_weight[t*k+j] = dy[t]·back[row], zero for a dropped assignment.
void combine_rows_backward(const DispatchPlan& plan, std::span<const float> weight, WireRows back,
                           std::span<const float> dy, WireRows d_out, std::span<float> d_weight);

// Backward of gather_rows: dx[t] = Σ over kept choices j (in order) of d_send[send_row[t*k+j]];
// overwrites dx, zero for a token with every choice dropped.
void gather_rows_backward(const DispatchPlan& plan, WireRows d_send, std::span<float> dx);

}  // namespace moe
