// Moving rows by the dispatch plan (runtime/dispatch_plan.hpp) as data-path ops: gather token
// rows into send order (and zero the padded exchange's padding rows), the weighted combine back
// into token rows, and their backward; receive order to expert order and back; the check_finite
// scan of rows. One index per output element (or per assignment for the weight gradient, per row
// for the scan), so each index writes only its own value and sums run in a fixed order: the kept
// choices j in order, as the host functions of runtime/permute.hpp, which give the same bits
// (tests/device/test_device_ops.cpp checks both against the float64 reference).
//
// The ops that touch rows in send or receive order take the wire value type as a template
// parameter, `float` or WireBf16 (the formats of runtime/wire_format.hpp): rows are rounded where
// they enter the wire and widened where they leave it, at the same points as the Dispatcher's
// functions, so the two layers exchange the same bytes; token and expert order stay fp32.
#pragma once

#include <cmath>
#include <cstdint>

#include "experts/device/host_device.hpp"
#include "runtime/wire_format.hpp"

namespace moe::device {

// A value of a bf16 row on the wire: the bits of to_bf16. A type of its own so that a bf16 row
// cannot be read as integers or as fp32 by mistake.
struct WireBf16 {
  std::uint16_t bits;
  friend constexpr bool operator==(WireBf16, WireBf16) = default;
};

MOE_HOST_DEVICE inline float from_wire(float v) { return v; }
MOE_HOST_DEVICE inline float from_wire(WireBf16 v) { return from_bf16(v.bits); }
MOE_HOST_DEVICE inline void to_wire(float v, float& out) { out = v; }
MOE_HOST_DEVICE inline void to_wire(float v, WireBf16& out) { out.bits = to_bf16(v); }

// send[r, c] = x[send_token[r], c]; zero for a padding row (send_token -1).
template <class Wire>
struct GatherRowsOp {
  std::int64_t width;
  const std::int64_t* send_token;  // [rows sent]
  const float* x;                  // [T, width]
  Wire* send;                      // [rows sent, width]

  MOE_HOST_DEVICE void operator()(std::int64_t i) const {
    const std::int64_t token = send_token[i / width];
    to_wire(token < 0 ? 0.0f : x[token * width + i % width], send[i]);
  }
};

// Zeros the padding rows (send_token -1) of a send-order buffer: the padded exchange sends them
// too, and what the backward sends there must be zeros like the forward's (as the host's
// zero_padding_rows, runtime/permute.hpp).
template <class Wire>
struct ZeroPaddingRowsOp {
  std::int64_t width;
  const std::int64_t* send_token;  // [rows sent]
  Wire* send;                      // [rows sent, width]

  MOE_HOST_DEVICE void operator()(std::int64_t i) const {
    if (send_token[i / width] < 0) to_wire(0.0f, send[i]);
  }
};

// y[t, c] = Σ over kept choices j (in order) of weight[t*k+j] · back[send_row[t*k+j], c]; zero
// for a token whose every choice was dropped.
template <class Wire>
struct CombineRowsOp {
  std::int64_t width, top_k;
  const std::int64_t* send_row;  // [T*k], -1: dropped
  const float* weight;           // [T*k]
  const Wire* back;              // [rows sent, width]
  float* y;                      // [T, width]

  MOE_HOST_DEVICE void operator()(std::int64_t i) const {
    const std::int64_t t = i / width, c = i % width;
    float sum = 0.0f;
    for (std::int64_t j = 0; j < top_k; ++j) {
      const std::int64_t row = send_row[t * top_k + j];
      if (row >= 0) sum += weight[t * top_k + j] * from_wire(back[row * width + c]);
    }
    y[i] = sum;
  }
};

// Backward of the combine, to the rows: d_out[send_row[a], c] = weight[a] · dy[t, c] for every
// kept assignment a = t*k+j (index space: assignments × width).
template <class Wire>
struct CombineRowsBackwardOp {
  std::int64_t width, top_k;
  const std::int64_t* send_row;
  const float* weight;
  const float* dy;  // [T, width]
  Wire* d_out;      // [rows sent, width]

  MOE_HOST_DEVICE void operator()(std::int64_t i) const {
    const std::int64_t a = i / width, c = i % width;
    const std::int64_t row = send_row[a];
    if (row >= 0) to_wire(weight[a] * dy[(a / top_k) * width + c], d_out[row * width + c]);
  }
};

// dy_t · row in the fixed order of runtime/permute.cpp's dot_row: 16 lanes, added pairwise.
template <class Wire>
MOE_HOST_DEVICE float dot_16_lanes(const float* g, const Wire* row, std::int64_t width) {
  constexpr int kLanes = 16;
  float lanes[kLanes] = {};
  std::int64_t c = 0;
  for (; c + kLanes <= width; c += kLanes) {
    for (int l = 0; l < kLanes; ++l) lanes[l] += g[c + l] * from_wire(row[c + l]);
  }
  for (; c < width; ++c) lanes[c % kLanes] += g[c] * from_wire(row[c]);
  for (int half = kLanes / 2; half > 0; half /= 2) {
    for (int l = 0; l < half; ++l) lanes[l] += lanes[l + half];
  }
  return lanes[0];
}

// Backward of the combine, to the weights: d_weight[a] = dy[t] · back[send_row[a]], zero for a
// dropped assignment (index space: assignments).
template <class Wire>
struct CombineWeightGradOp {
  std::int64_t width, top_k;
  const std::int64_t* send_row;
  const float* dy;
  const Wire* back;
  float* d_weight;  // [T*k]

  MOE_HOST_DEVICE void operator()(std::int64_t a) const {
    const std::int64_t row = send_row[a];
    d_weight[a] = row < 0 ? 0.0f : dot_16_lanes(dy + (a / top_k) * width, back + row * width, width);
  }
};

// Backward of the gather: dx[t, c] = Σ over kept choices j (in order) of d_send[send_row[t*k+j], c].
template <class Wire>
struct GatherRowsBackwardOp {
  std::int64_t width, top_k;
  const std::int64_t* send_row;
  const Wire* d_send;   // [rows sent, width]
  float* dx;            // [T, width]

  MOE_HOST_DEVICE void operator()(std::int64_t i) const {
    const std::int64_t t = i / width, c = i % width;
    float sum = 0.0f;
    for (std::int64_t j = 0; j < top_k; ++j) {
      const std::int64_t row = send_row[t * top_k + j];
      if (row >= 0) sum += from_wire(d_send[row * width + c]);
    }
    dx[i] = sum;
  }
};

// Receive order to expert order within chunk c (what the expert GEMMs read), one index per value
// of the chunk: row r of the chunk's received rows goes to row expert_row[r] of the expert-order
// buffer. The map comes from the plan (expert_row_map, runtime/device/expert_row_map.hpp).
template <class Wire>
struct ToExpertOrderOp {
  std::int64_t width;
  const std::int64_t* expert_row;  // [chunk rows]
  const Wire* received;            // the chunk's first received row
  float* expert;                   // [rows, width], the whole expert-order buffer

  MOE_HOST_DEVICE void operator()(std::int64_t i) const {
    expert[expert_row[i / width] * width + i % width] = from_wire(received[i]);
  }
};

// Back: the experts' outputs from expert order into the chunk's receive-order rows.
template <class Wire>
struct FromExpertOrderOp {
  std::int64_t width;
  const std::int64_t* expert_row;  // [chunk rows]
  const float* expert;             // [rows, width]
  Wire* received;                  // the chunk's first received row

  MOE_HOST_DEVICE void operator()(std::int64_t i) const {
    to_wire(expert[expert_row[i / width] * width + i % width], received[i]);
  }
};

// check_finite on the device path: column[r] is the column of row r's first non-finite value, or
// -1. One index per row, so the host can name the first in row-major order, in the words of
// first_non_finite (runtime/local_failure.hpp).
struct FirstNonFiniteOp {
  std::int64_t width;
  const float* rows;     // [n, width]
  std::int64_t* column;  // [n]

  MOE_HOST_DEVICE void operator()(std::int64_t r) const {
    std::int64_t found = -1;
    for (std::int64_t c = 0; c < width && found < 0; ++c) {
      if (!std::isfinite(rows[r * width + c])) found = c;
    }
    column[r] = found;
  }
};

// dst[i] += src[i]: a second term joins rows already written (the shared expert's output, or its
// input gradient).
struct AddRowsOp {
  const float* src;
  float* dst;

  MOE_HOST_DEVICE void operator()(std::int64_t i) const { dst[i] += src[i]; }
};

}  // namespace moe::device
