// The dispatch plan of SPEC.md section 4, computed once per local batch: which assignments each
// expert keeps under the capacity limit, where every kept assignment sits in the send buffer, and
// (once the per-expert counts are exchanged) how the received rows group by local expert. Forward
// and backward, and every exchange strategy, read the same plan; this is what makes their results
// agree by construction.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "runtime/config.hpp"

namespace moe {

// Assignments one expert accepts from a source rank holding `num_tokens` tokens (SPEC.md section
// 4); -1 means no limit (dropless).
std::int64_t expert_capacity(const MoeConfig& config, std::int64_t num_tokens);

struct DispatchPlan {
  std::int64_t num_tokens = 0;
  std::int64_t top_k = 0;
  std::int64_t num_experts = 0;
  int ep_size = 0;
  std::int64_t experts_per_rank = 0;
  std::int64_t capacity = -1;

  // Source side. The send buffer is ordered by global expert, then slot; since rank p owns the
  // contiguous experts [p*E/P, (p+1)*E/P), this is also ordered by destination rank.
  std::vector<std::int64_t> send_row;      // [T*k] row of assignment t*k+j in the send buffer, -1: dropped
  std::vector<std::int64_t> send_token;    // [rows sent] source token of each send row
  std::vector<std::int64_t> kept;          // [E] assignments kept per expert (this rank's)
  std::vector<std::int64_t> send_offsets;  // [P+1] first send row for each destination rank
  std::int64_t dropped_assignments = 0;
  std::int64_t dropped_tokens = 0;         // tokens whose every assignment was dropped

  // Destination side, known after the count exchange.
  std::vector<std::int64_t> recv_counts;     // [P * E/P] rows from source s for local expert e at s*E/P + e
  std::vector<std::int64_t> recv_offsets;    // [P+1] first received row from each source rank
  std::vector<std::int64_t> expert_offsets;  // [E/P + 1] rows of each local expert once regrouped

  std::int64_t num_send_rows() const { return send_offsets.back(); }
  std::int64_t num_recv_rows() const { return recv_offsets.back(); }
  // Rows this rank sends to destination p.
  std::int64_t send_rows_to(int p) const { return send_offsets[p + 1] - send_offsets[p]; }
  std::int64_t recv_rows_from(int s) const { return recv_offsets[s + 1] - recv_offsets[s]; }

  // Scratch of the score policy, kept here so rebuilding a plan allocates nothing in steady state.
  std::vector<std::int64_t> scratch_order;
  std::vector<std::int64_t> scratch_bucket;
};

// Builds the source side from the router's choices (expert and weight are [T, k]).
void build_plan(const MoeConfig& config, int ep_size, std::span<const std::int32_t> expert,
                std::span<const float> weight, std::int64_t num_tokens, DispatchPlan& plan);

// Completes the destination side from the counts every source rank sends this rank:
// recv_counts[s * E/P + e] rows from source s for local expert e.
void set_receive_counts(DispatchPlan& plan, std::span<const std::int64_t> recv_counts);

}  // namespace moe
