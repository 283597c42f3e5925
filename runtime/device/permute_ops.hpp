// Moving rows by the dispatch plan (runtime/dispatch_plan.hpp) as data-path ops, for fp32 rows
// (the device path's wire format): gather token rows into send order (and zero the padded
// exchange's padding rows), the weighted combine back into token rows, and their backward;
// receive order to expert order and back; the check_finite scan of rows. One index per output
// element (or per assignment for the weight gradient, per row for the scan), so each index writes
// only its own value and sums run in a fixed order: the kept choices j in order, as the host
// functions of runtime/permute.hpp, which give the same bits on fp32 rows
// (tests/runtime/test_device_ops.cpp checks both against the float64 reference).
#pragma once

#include <cmath>
#include <cstdint>

#include "experts/device/host_device.hpp"

namespace moe::device {

// send[r, c] = x[send_token[r], c]; zero for a padding row (send_token -1).
struct GatherRowsOp {
  std::int64_t width;
  const std::int64_t* send_token;  // [rows sent]
  const float* x;                  // [T, width]
  float* send;                     // [rows sent, width]

  MOE_HOST_DEVICE void operator()(std::int64_t i) const {
    const std::int64_t token = send_token[i / width];
    send[i] = token < 0 ? 0.0f : x[token * width + i % width];
  }
};

// Zeros the padding rows (send_token -1) of a send-order buffer: the padded exchange sends them
// too, and what the backward sends there must be zeros like the forward's (as the host's
// zero_padding_rows, runtime/permute.hpp).
struct ZeroPaddingRowsOp {
  std::int64_t width;
  const std::int64_t* send_token;  // [rows sent]
  float* send;                     // [rows sent, width]

  MOE_HOST_DEVICE void operator()(std::int64_t i) const {
    if (send_token[i / width] < 0) send[i] = 0.0f;
  }
};

// y[t, c] = Σ over kept choices j (in order) of weight[t*k+j] · back[send_row[t*k+j], c]; zero
// for a token whose every choice was dropped.
struct CombineRowsOp {
  std::int64_t width, top_k;
  const std::int64_t* send_row;  // [T*k], -1: dropped
  const float* weight;           // [T*k]
  const float* back;             // [rows sent, width]
  float* y;                      // [T, width]

  MOE_HOST_DEVICE void operator()(std::int64_t i) const {
    const std::int64_t t = i / width, c = i % width;
    float sum = 0.0f;
    for (std::int64_t j = 0; j < top_k; ++j) {
      const std::int64_t row = send_row[t * top_k + j];
      if (row >= 0) sum += weight[t * top_k + j] * back[row * width + c];
    }
    y[i] = sum;
  }
};

// Backward of the combine, to the rows: d_out[send_row[a], c] = weight[a] · dy[t, c] for every
// kept assignment a = t*k+j (index space: assignments × width).
struct CombineRowsBackwardOp {
  std::int64_t width, top_k;
  const std::int64_t* send_row;
  const float* weight;
  const float* dy;  // [T, width]
  float* d_out;     // [rows sent, width]

  MOE_HOST_DEVICE void operator()(std::int64_t i) const {
    const std::int64_t a = i / width, c = i % width;
    const std::int64_t row = send_row[a];
    if (row >= 0) d_out[row * width + c] = weight[a] * dy[(a / top_k) * width + c];
  }
};

// dy_t · row in the fixed order of runtime/permute.cpp's dot_row: 16 lanes, added pairwise.
MOE_HOST_DEVICE inline float dot_16_lanes(const float* g, const float* row, std::int64_t width) {
  constexpr int kLanes = 16;
  float lanes[kLanes] = {};
  std::int64_t c = 0;
  for (; c + kLanes <= width; c += kLanes) {
    for (int l = 0; l < kLanes; ++l) lanes[l] += g[c + l] * row[c + l];
  }
  for (; c < width; ++c) lanes[c % kLanes] += g[c] * row[c];
  for (int half = kLanes / 2; half > 0; half /= 2) {
    for (int l = 0; l < half; ++l) lanes[l] += lanes[l + half];
  }
  return lanes[0];
}

// Backward of the combine, to the weights: d_weight[a] = dy[t] · back[send_row[a]], zero for a
// dropped assignment (index space: assignments).
struct CombineWeightGradOp {
  std::int64_t width, top_k;
  const std::int64_t* send_row;
  const float* dy;
  const float* back;
  float* d_weight;  // [T*k]

  MOE_HOST_DEVICE void operator()(std::int64_t a) const {
    const std::int64_t row = send_row[a];
    d_weight[a] = row < 0 ? 0.0f : dot_16_lanes(dy + (a / top_k) * width, back + row * width, width);
  }
};

// Backward of the gather: dx[t, c] = Σ over kept choices j (in order) of d_send[send_row[t*k+j], c].
struct GatherRowsBackwardOp {
  std::int64_t width, top_k;
  const std::int64_t* send_row;
  const float* d_send;  // [rows sent, width]
  float* dx;            // [T, width]

  MOE_HOST_DEVICE void operator()(std::int64_t i) const {
    const std::int64_t t = i / width, c = i % width;
    float sum = 0.0f;
    for (std::int64_t j = 0; j < top_k; ++j) {
      const std::int64_t row = send_row[t * top_k + j];
      if (row >= 0) sum += d_send[row * width + c];
    }
    dx[i] = sum;
  }
};

// Receive order to expert order within chunk c (what the expert GEMMs read), one index per value
// of the chunk: row r of the chunk's received rows goes to row expert_row[r] of the expert-order
// buffer. The map comes from the plan (expert_row_map, runtime/device/expert_row_map.hpp).
struct ToExpertOrderOp {
  std::int64_t width;
  const std::int64_t* expert_row;  // [chunk rows]
  const float* received;           // the chunk's first received row
  float* expert;                   // [rows, width], the whole expert-order buffer

  MOE_HOST_DEVICE void operator()(std::int64_t i) const {
    expert[expert_row[i / width] * width + i % width] = received[i];
  }
};

// Back: the experts' outputs from expert order into the chunk's receive-order rows.
struct FromExpertOrderOp {
  std::int64_t width;
  const std::int64_t* expert_row;  // [chunk rows]
  const float* expert;             // [rows, width]
  float* received;                 // the chunk's first received row

  MOE_HOST_DEVICE void operator()(std::int64_t i) const {
    received[i] = expert[expert_row[i / width] * width + i % width];
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
