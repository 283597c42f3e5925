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

// Chunk c's part of a list of n slots of global expert e, owned by another rank or this one.
ChunkPart part_of(const DispatchPlan& plan, Index e, Index n, int c) {
  const Index owner = owner_of_expert(e, plan.num_experts, plan.ep_size);
  const Index first = first_expert_of(owner, plan.num_experts, plan.ep_size);
  return chunk_part(n, e - first, num_experts_of(owner, plan.num_experts, plan.ep_size), c,
                    plan.num_chunks);
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

void rank_assignments(const MoeConfig& config, std::span<const std::int32_t> expert,
                      std::span<const float> weight, Index num_tokens, DispatchPlan& plan) {
  const Index k = config.top_k, num_experts = config.num_experts, num_assign = num_tokens * k;
  // Bucket the assignments by expert (a counting sort). Visiting them choice-major, token-minor
  // leaves each bucket in the position policy's order (GShard: all first choices in token order,
  // then all second choices, ...).
  std::vector<Index>& start = plan.order_start;
  start.assign(static_cast<std::size_t>(num_experts + 1), 0);
  for (Index a = 0; a < num_assign; ++a) ++start[static_cast<std::size_t>(expert[a] + 1)];
  for (Index e = 0; e < num_experts; ++e) start[e + 1] += start[e];
  grow(plan.order, num_assign);
  std::vector<Index>& fill = plan.scratch_bucket;
  fill.assign(start.begin(), start.end() - 1);
  for (Index j = 0; j < k; ++j) {
    for (Index t = 0; t < num_tokens; ++t) plan.order[fill[expert[t * k + j]]++] = t * k + j;
  }
  if (config.drop_policy == DropPolicy::position) return;
  // Score policy: by weight descending, ties by smaller token, then smaller choice. A total order
  // on (weight, assignment index t*k+j), so plain sort is deterministic and, unlike stable_sort,
  // needs no temporary buffer.
  for (Index e = 0; e < num_experts; ++e) {
    std::sort(plan.order.begin() + start[e], plan.order.begin() + start[e + 1], [&](Index a, Index b) {
      return weight[a] > weight[b] || (weight[a] == weight[b] && a < b);
    });
  }
}

void build_plan(const MoeConfig& config, int ep_size, int ep_rank, std::span<const std::int32_t> expert,
                Index num_tokens, int num_chunks, Index padded_slots,
                std::span<const Index> expert_caps, DispatchPlan& plan) {
  const Index k = config.top_k;
  const Index num_experts = config.num_experts;
  const Index num_assign = num_tokens * k;
  plan.num_tokens = num_tokens;
  plan.top_k = k;
  plan.num_experts = num_experts;
  plan.ep_size = ep_size;
  plan.ep_rank = ep_rank;
  plan.local_experts = num_experts_of(ep_rank, num_experts, ep_size);
  plan.capacity = expert_capacity(config, num_tokens);
  plan.num_chunks = num_chunks;
  plan.padded_slots = padded_slots;

  // Each expert keeps a prefix of its list; send_row holds first the slot within the expert's
  // kept list (-1: dropped), then the row in the send buffer.
  plan.kept.assign(static_cast<std::size_t>(num_experts), 0);
  grow(plan.send_row, num_assign);
  std::vector<Index>& slot = plan.send_row;
  for (Index e = 0; e < num_experts; ++e) {
    const Index listed = plan.order_start[e + 1] - plan.order_start[e];
    const Index cap = expert_caps.empty() ? plan.capacity : expert_caps[e];
    const Index keep = cap < 0 ? listed : std::min(listed, cap);
    plan.kept[e] = keep;
    for (Index i = 0; i < listed; ++i) slot[plan.order[plan.order_start[e] + i]] = i < keep ? i : -1;
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
    // A rank without experts receives nothing: its block starts where the next one does.
    int next_rank = 0;
    for (Index e = 0; e < num_experts; ++e) {
      const Index owner = owner_of_expert(e, num_experts, ep_size);
      while (next_rank <= owner) plan.send_offsets[c * ep_size + next_rank++] = row;
      block_start[c * num_experts + e] = row;
      row += part_of(plan, e, list_length(e), c).rows;
    }
    while (next_rank < ep_size) plan.send_offsets[c * ep_size + next_rank++] = row;
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
      const Index e = expert[a], n = list_length(e);
      int c = 0;
      ChunkPart part = part_of(plan, e, n, 0);
      while (slot[a] >= part.begin + part.rows || slot[a] < part.begin) part = part_of(plan, e, n, ++c);
      const Index r = block_start[c * num_experts + e] + slot[a] - part.begin;
      slot[a] = r;
      plan.send_token[r] = t;
      any_kept = true;
    }
    if (!any_kept) ++plan.dropped_tokens;
  }
}

void set_receive_counts(DispatchPlan& plan, std::span<const std::int64_t> recv_counts) {
  const Index local = plan.local_experts;
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
