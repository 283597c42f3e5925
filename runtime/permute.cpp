#include "runtime/permute.hpp"

#include <algorithm>

namespace moe {

void gather_rows(const DispatchPlan& plan, std::span<const float> x, std::int64_t width,
                 std::span<float> send) {
  const std::int64_t rows = plan.num_send_rows();
  for (std::int64_t i = 0; i < rows; ++i) {
    const float* src = x.data() + plan.send_token[i] * width;
    std::copy_n(src, width, send.data() + i * width);
  }
}

void regroup_rows(const DispatchPlan& plan, std::span<const float> from, std::int64_t width,
                  std::span<float> to, bool to_expert) {
  const std::int64_t local = plan.experts_per_rank;
  // Per local expert, the next expert-major row to fill: rows from source 0 first, then 1, ...
  // Each (source, expert) block is contiguous on both sides, so this is one copy per block.
  std::int64_t received = 0;
  for (int s = 0; s < plan.ep_size; ++s) {
    for (std::int64_t e = 0; e < local; ++e) {
      const std::int64_t rows = plan.recv_counts[s * local + e];
      std::int64_t expert_row = plan.expert_offsets[e];
      for (int earlier = 0; earlier < s; ++earlier) expert_row += plan.recv_counts[earlier * local + e];
      const std::int64_t src_row = to_expert ? received : expert_row;
      const std::int64_t dst_row = to_expert ? expert_row : received;
      std::copy_n(from.data() + src_row * width, rows * width, to.data() + dst_row * width);
      received += rows;
    }
  }
}

void combine_rows(const DispatchPlan& plan, std::span<const float> weight,
                  std::span<const float> back, std::int64_t width, std::span<float> y) {
  const std::int64_t k = plan.top_k;
  for (std::int64_t t = 0; t < plan.num_tokens; ++t) {
    float* out = y.data() + t * width;
    std::fill_n(out, width, 0.0f);
    for (std::int64_t j = 0; j < k; ++j) {
      const std::int64_t row = plan.send_row[t * k + j];
      if (row < 0) continue;
      const float w = weight[t * k + j];
      const float* in = back.data() + row * width;
      for (std::int64_t c = 0; c < width; ++c) out[c] += w * in[c];
    }
  }
}

void combine_rows_backward(const DispatchPlan& plan, std::span<const float> weight,
                           std::span<const float> back, std::span<const float> dy,
                           std::int64_t width, std::span<float> d_out, std::span<float> d_weight) {
  const std::int64_t k = plan.top_k;
  for (std::int64_t t = 0; t < plan.num_tokens; ++t) {
    const float* g = dy.data() + t * width;
    for (std::int64_t j = 0; j < k; ++j) {
      const std::int64_t a = t * k + j;
      const std::int64_t row = plan.send_row[a];
      if (row < 0) {
        d_weight[a] = 0.0f;
        continue;
      }
      const float w = weight[a];
      const float* out = back.data() + row * width;
      float* d = d_out.data() + row * width;
      double dot = 0;
      for (std::int64_t c = 0; c < width; ++c) {
        d[c] = w * g[c];
        dot += static_cast<double>(g[c]) * out[c];
      }
      d_weight[a] = static_cast<float>(dot);
    }
  }
}

void gather_rows_backward(const DispatchPlan& plan, std::span<const float> d_send,
                          std::int64_t width, std::span<float> dx) {
  const std::int64_t k = plan.top_k;
  for (std::int64_t t = 0; t < plan.num_tokens; ++t) {
    float* out = dx.data() + t * width;
    std::fill_n(out, width, 0.0f);
    for (std::int64_t j = 0; j < k; ++j) {
      const std::int64_t row = plan.send_row[t * k + j];
      if (row < 0) continue;
      const float* in = d_send.data() + row * width;
      for (std::int64_t c = 0; c < width; ++c) out[c] += in[c];
    }
  }
}

}  // namespace moe
