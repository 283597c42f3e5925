#include "runtime/dispatch_plan.hpp"

#include <algorithm>
#include <cmath>

namespace moe {

std::int64_t expert_capacity(const MoeConfig& config, std::int64_t num_tokens) {
  if (config.dropless()) return -1;
  if (num_tokens == 0) return 0;
  const double wanted = std::ceil(config.capacity_factor * static_cast<double>(num_tokens) *
                                  static_cast<double>(config.top_k) /
                                  static_cast<double>(config.num_experts));
  return std::max(config.min_capacity, static_cast<std::int64_t>(wanted));
}

namespace {

using Index = std::int64_t;

template <class T>
void grow(std::vector<T>& v, Index n) {
  if (static_cast<Index>(v.size()) < n) v.resize(static_cast<std::size_t>(n));
}

// Position policy (GShard): all first choices in token order, then all second choices, ...; each
// expert keeps its first `capacity` assignments. `slot` receives each assignment's rank within its
// expert, or -1 when dropped.
void keep_by_position(std::span<const std::int32_t> expert, Index num_tokens, Index k,
                      Index capacity, std::vector<Index>& kept, std::vector<Index>& slot) {
  for (Index j = 0; j < k; ++j) {
    for (Index t = 0; t < num_tokens; ++t) {
      const Index a = t * k + j;
      Index& n = kept[static_cast<std::size_t>(expert[a])];
      if (capacity < 0 || n < capacity) {
        slot[a] = n++;
      } else {
        slot[a] = -1;
      }
    }
  }
}

// Score policy: within each expert, assignments ranked by weight descending, ties by smaller token,
// then smaller choice. Assignments are bucketed by expert (counting sort), each bucket sorted.
void keep_by_score(std::span<const std::int32_t> expert, std::span<const float> weight,
                   Index num_tokens, Index k, Index num_experts, Index capacity,
                   std::vector<Index>& kept, std::vector<Index>& slot, DispatchPlan& plan) {
  const Index num_assign = num_tokens * k;
  std::vector<Index>& start = plan.scratch_bucket;  // [E+1] bucket starts
  start.assign(static_cast<std::size_t>(num_experts + 1), 0);
  for (Index a = 0; a < num_assign; ++a) ++start[static_cast<std::size_t>(expert[a] + 1)];
  for (Index e = 0; e < num_experts; ++e) start[e + 1] += start[e];
  grow(plan.scratch_order, num_assign);
  std::vector<Index>& order = plan.scratch_order;
  for (Index a = 0; a < num_assign; ++a) order[start[expert[a]] + kept[expert[a]]++] = a;
  std::fill(kept.begin(), kept.end(), 0);

  for (Index e = 0; e < num_experts; ++e) {
    auto first = order.begin() + start[e];
    auto last = order.begin() + start[e + 1];
    // A total order (weight, then assignment index = (t, j)), so plain sort is deterministic and,
    // unlike stable_sort, needs no temporary buffer.
    std::sort(first, last, [&](Index a, Index b) {
      return weight[a] > weight[b] || (weight[a] == weight[b] && a < b);
    });
    Index n = 0;
    for (auto it = first; it != last; ++it) {
      if (capacity < 0 || n < capacity) {
        slot[*it] = n++;
      } else {
        slot[*it] = -1;
      }
    }
    kept[e] = n;
  }
}

}  // namespace

std::int64_t DispatchPlan::send_rows_to(int p) const {
  Index rows = 0;
  for (int c = 0; c < num_chunks; ++c) rows += send_rows(c, p);
  return rows;
}

std::int64_t DispatchPlan::recv_rows_from(int s) const {
  Index rows = 0;
  for (int c = 0; c < num_chunks; ++c) rows += recv_rows(c, s);
  return rows;
}

void build_plan(const MoeConfig& config, int ep_size, std::span<const std::int32_t> expert,
                std::span<const float> weight, Index num_tokens, int num_chunks,
                Index padded_slots, DispatchPlan& plan) {
  const Index k = config.top_k;
  const Index num_experts = config.num_experts;
  const Index num_assign = num_tokens * k;
  plan.num_tokens = num_tokens;
  plan.top_k = k;
  plan.num_experts = num_experts;
  plan.ep_size = ep_size;
  plan.experts_per_rank = num_experts / ep_size;
  plan.capacity = expert_capacity(config, num_tokens);
  plan.num_chunks = num_chunks;
  plan.padded_slots = padded_slots;

  plan.kept.assign(static_cast<std::size_t>(num_experts), 0);
  grow(plan.send_row, num_assign);
  std::vector<Index>& slot = plan.send_row;  // first the slot within the expert, then the row
  if (config.drop_policy == DropPolicy::position) {
    keep_by_position(expert, num_tokens, k, plan.capacity, plan.kept, slot);
  } else {
    keep_by_score(expert, weight, num_tokens, k, num_experts, plan.capacity, plan.kept, slot,
                  plan);
  }

  // Send buffer, chunk-major: block_start[c*E + e] is the first row of expert e's part c of its
  // list (its kept rows, or padded_slots rows with padding after the kept ones).
  const int chunks = num_chunks;
  const auto list_length = [&](Index e) { return padded_slots < 0 ? plan.kept[e] : padded_slots; };
  std::vector<Index>& block_start = plan.scratch_bucket;
  block_start.assign(static_cast<std::size_t>(chunks * num_experts), 0);
  plan.send_offsets.assign(static_cast<std::size_t>(chunks * ep_size + 1), 0);
  Index row = 0;
  for (int c = 0; c < chunks; ++c) {
    for (Index e = 0; e < num_experts; ++e) {
      if (e % plan.experts_per_rank == 0) plan.send_offsets[c * ep_size + e / plan.experts_per_rank] = row;
      block_start[c * num_experts + e] = row;
      row += chunk_part(list_length(e), e % plan.experts_per_rank, plan.experts_per_rank, c, chunks).rows;
    }
  }
  plan.send_offsets.back() = row;
  grow(plan.send_token, row);
  std::fill_n(plan.send_token.begin(), row, Index{-1});
  Index kept_total = 0;
  for (Index e = 0; e < num_experts; ++e) kept_total += plan.kept[e];
  plan.dropped_assignments = num_assign - kept_total;
  plan.dropped_tokens = 0;
  for (Index t = 0; t < num_tokens; ++t) {
    bool any_kept = false;
    for (Index j = 0; j < k; ++j) {
      const Index a = t * k + j;
      if (slot[a] < 0) continue;
      // The chunk whose part of [0, n) holds this slot (C is small: a short search).
      const Index n = list_length(expert[a]);
      const Index local_expert = expert[a] % plan.experts_per_rank;
      int c = 0;
      ChunkPart part = chunk_part(n, local_expert, plan.experts_per_rank, 0, chunks);
      while (slot[a] >= part.begin + part.rows || slot[a] < part.begin) {
        part = chunk_part(n, local_expert, plan.experts_per_rank, ++c, chunks);
      }
      const Index r = block_start[c * num_experts + expert[a]] + slot[a] - part.begin;
      slot[a] = r;
      plan.send_token[r] = t;
      any_kept = true;
    }
    if (!any_kept) ++plan.dropped_tokens;
  }
}

void set_receive_counts(DispatchPlan& plan, std::span<const std::int64_t> recv_counts) {
  const Index local = plan.experts_per_rank;
  const int ep_size = plan.ep_size;
  const int chunks = plan.num_chunks;
  plan.recv_counts.assign(recv_counts.begin(), recv_counts.end());
  plan.recv_offsets.assign(static_cast<std::size_t>(chunks * ep_size + 1), 0);
  plan.expert_offsets.assign(static_cast<std::size_t>(chunks * (local + 1)), 0);
  Index row = 0;
  for (int c = 0; c < chunks; ++c) {
    Index* offsets = plan.expert_offsets.data() + c * (local + 1);
    for (int s = 0; s < ep_size; ++s) {
      plan.recv_offsets[c * ep_size + s] = row;
      for (Index e = 0; e < local; ++e) {
        const Index rows = chunk_part(recv_counts[s * local + e], e, local, c, chunks).rows;
        row += rows;
        offsets[e + 1] += rows;
      }
    }
    for (Index e = 0; e < local; ++e) offsets[e + 1] += offsets[e];
  }
  plan.recv_offsets.back() = row;
}

}  // namespace moe
