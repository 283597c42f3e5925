// The dispatch plan of SPEC.md section 4, computed once per local batch: which assignments each
// expert keeps under the capacity limit, where every kept assignment sits in the send buffer, and
// (once the per-expert counts are exchanged) how the received rows group by local expert. Forward
// and backward, and every exchange strategy, read the same plan; this is what makes their results
// agree by construction.
//
// Chunks (for overlapping exchanges with expert compute) follow the local experts: whole experts,
// or parts of one expert's rows when there are more chunks than local experts (chunk_part below). Drops are decided before the split, so chunking never changes them. Every
// layout is chunk-major, so one chunk's rows are contiguous everywhere:
//   send     (chunk, destination rank, local expert, slot)
//   receive  (chunk, source rank, local expert, slot)
//   expert   (chunk, local expert, source rank, slot)   -- what the expert GEMMs read
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "runtime/config.hpp"

namespace moe {

// Assignments one expert accepts from `num_tokens` tokens (SPEC.md section 4): those of one
// source rank (capacity_scope = rank), or of the whole group (global); -1 means no limit
// (dropless).
std::int64_t expert_capacity(const MoeConfig& config, std::int64_t num_tokens);

struct DispatchPlan {
  std::int64_t num_tokens = 0;
  std::int64_t top_k = 0;
  std::int64_t num_experts = 0;
  int ep_size = 0;
  int ep_rank = 0;
  std::int64_t local_experts = 0;  // experts this rank owns (SPEC.md section 1; may be 0)
  std::int64_t capacity = -1;      // with capacity_scope = rank; see expert_caps

  int num_chunks = 1;
  // Padded exchange: every (source, expert) list is padded_slots long, kept rows first, then
  // padding rows (send_token -1, zeros on the wire). -1: the variable exchange, lists as kept.
  std::int64_t padded_slots = -1;

  // This rank's assignments of each expert in the drop policy's order: order[order_start[e] ..
  // order_start[e+1]) are the assignment indices t*k+j routed to expert e, best first. An expert
  // keeps a prefix of its list (with capacity_scope = global too: see runtime/global_capacity.hpp).
  std::vector<std::int64_t> order;        // [T*k]
  std::vector<std::int64_t> order_start;  // [E+1]

  // Source side. Rank p owns the contiguous experts [floor(p*E/P), floor((p+1)*E/P)), so within a
  // chunk the send rows ordered by global expert are also ordered by destination rank.
  std::vector<std::int64_t> send_row;      // [T*k] row of assignment t*k+j in the send buffer, -1: dropped
  std::vector<std::int64_t> send_token;    // [rows sent] source token of each send row, -1: padding
  std::vector<std::int64_t> kept;          // [E] assignments kept per expert (this rank's)
  std::vector<std::int64_t> send_offsets;  // [C*P+1] first send row of (chunk c, destination p) at c*P+p
  std::int64_t dropped_assignments = 0;
  std::int64_t dropped_tokens = 0;         // tokens whose every assignment was dropped

  // Destination side, known after the count exchange.
  std::vector<std::int64_t> recv_counts;     // [P * L] rows from source s for local expert e at s*L + e
                                             // (L = local_experts)
  std::vector<std::int64_t> recv_offsets;    // [C*P+1] first received row of (chunk c, source s)
  std::vector<std::int64_t> expert_offsets;  // [C*(L+1)] per chunk, rows of each local expert,
                                             // relative to the chunk's first row

  std::int64_t num_send_rows() const { return send_offsets.back(); }
  std::int64_t num_recv_rows() const { return recv_offsets.back(); }
  // Rows of (chunk c, destination p) and of (chunk c, source s).
  std::int64_t send_rows(int c, int p) const { return send_offsets[c * ep_size + p + 1] - send_offsets[c * ep_size + p]; }
  std::int64_t recv_rows(int c, int s) const { return recv_offsets[c * ep_size + s + 1] - recv_offsets[c * ep_size + s]; }
  // Over all chunks.
  std::int64_t send_rows_to(int p) const;
  std::int64_t recv_rows_from(int s) const;
  // First row and row count of chunk c in the send layout, and in the receive/expert layouts.
  std::int64_t chunk_send_begin(int c) const { return send_offsets[c * ep_size]; }
  std::int64_t chunk_send_rows(int c) const { return send_offsets[(c + 1) * ep_size] - send_offsets[c * ep_size]; }
  std::int64_t chunk_recv_begin(int c) const { return recv_offsets[c * ep_size]; }
  std::int64_t chunk_recv_rows(int c) const { return recv_offsets[(c + 1) * ep_size] - recv_offsets[c * ep_size]; }
  std::span<const std::int64_t> chunk_expert_offsets(int c) const {
    return std::span<const std::int64_t>(expert_offsets).subspan(
        static_cast<std::size_t>(c * (local_experts + 1)), static_cast<std::size_t>(local_experts + 1));
  }

  // Scratch, kept here so rebuilding a plan allocates nothing in steady state.
  std::vector<std::int64_t> scratch_bucket;
};

// Which rows of a (source rank, local expert e) list of n slots belong to chunk c of C. Chunks
// follow the local experts, so that each expert GEMM stays as large as the chunk count allows (a
// GEMM on a few dozen rows runs well below the peak: packing the weights is paid per call):
//   (E_l: the experts of the rank owning the list)
//   C < E_l: chunk c holds whole experts, those with e·C/E_l == c;
//   C >= E_l: expert e owns the consecutive chunks [f(e), f(e+1)), f(e) = ceil(e·C/E_l), and its
//     list is split evenly among them: part p of q is [n·p/q, n·(p+1)/q).
struct ChunkPart {
  std::int64_t begin = 0;  // first slot of the list in chunk c
  std::int64_t rows = 0;
};
inline ChunkPart chunk_part(std::int64_t n, std::int64_t expert, std::int64_t owner_experts,
                            int c, int num_chunks) {
  const std::int64_t chunks = num_chunks;
  if (chunks < owner_experts) {
    const std::int64_t owner = expert * chunks / owner_experts;
    return owner == c ? ChunkPart{0, n} : ChunkPart{owner < c ? n : 0, 0};
  }
  const auto first = [&](std::int64_t e) { return (e * chunks + owner_experts - 1) / owner_experts; };
  const std::int64_t f = first(expert), q = first(expert + 1) - f;
  if (c < f) return {0, 0};
  if (c >= f + q) return {n, 0};
  const std::int64_t p = c - f;
  return {n * p / q, n * (p + 1) / q - n * p / q};
}

// Calls fn(received_row, expert_row, rows) for every (source, local expert) block of chunk c. Each
// block is contiguous in both orders; in expert order, expert e's rows from source s follow those
// from sources 0..s-1.
template <class Fn>
void for_each_expert_block(const DispatchPlan& plan, int c, Fn&& fn) {
  const std::int64_t local = plan.local_experts;
  const std::int64_t chunk_begin = plan.chunk_recv_begin(c);
  const auto expert_offsets = plan.chunk_expert_offsets(c);
  std::int64_t received = chunk_begin;
  for (int s = 0; s < plan.ep_size; ++s) {
    for (std::int64_t e = 0; e < local; ++e) {
      const std::int64_t rows =
          chunk_part(plan.recv_counts[s * local + e], e, local, c, plan.num_chunks).rows;
      std::int64_t expert_row = chunk_begin + expert_offsets[e];
      for (int earlier = 0; earlier < s; ++earlier) {
        expert_row += chunk_part(plan.recv_counts[earlier * local + e], e, local, c, plan.num_chunks).rows;
      }
      fn(received, expert_row, rows);
      received += rows;
    }
  }
}

// First step: ranks this rank's assignments of each expert in the drop policy's order (fills
// plan.order and plan.order_start; expert and weight are [T, k]).
void rank_assignments(const MoeConfig& config, std::span<const std::int32_t> expert,
                      std::span<const float> weight, std::int64_t num_tokens, DispatchPlan& plan);

// Second step: builds the source side, expert e keeping the first expert_caps[e] assignments of
// its list (-1: all); empty expert_caps means the capacity of this rank's batch for every expert
// (capacity_scope = rank). padded_slots as in DispatchPlan; it must be at least every kept count.
void build_plan(const MoeConfig& config, int ep_size, int ep_rank,
                std::span<const std::int32_t> expert, std::int64_t num_tokens, int num_chunks,
                std::int64_t padded_slots, std::span<const std::int64_t> expert_caps,
                DispatchPlan& plan);

// Completes the destination side from the counts every source rank sends this rank:
// recv_counts[s * L + e] rows from source s for local expert e (L = plan.local_experts).
void set_receive_counts(DispatchPlan& plan, std::span<const std::int64_t> recv_counts);

}  // namespace moe
