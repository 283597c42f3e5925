// The two-level exchange (DeepEP's internode dispatch, Tutel's 2DH all-to-all): each token's row
// crosses to another node at most once per destination node, and is fanned out to the experts'
// ranks inside that node; on the way back the outputs for one token are combined inside the node
// first, so one partial sum per (token, node) crosses back.
//
// Rank (n, l) (node n, local index l; comm/node_topology.hpp) relays for the ranks of local index
// l on every node: what a source (n, l) sends to node m goes to (m, l) over the network (one
// message per destination node), and (m, l) passes each row on to the ranks of node m that need
// it over shared memory. The rows arrive in exactly the layout a flat alltoallv with the same
// per-rank counts gives, so the caller's expert code does not know which exchange ran.
//
// Rows are fp32 (`width` floats). The caller describes the flat exchange: the rows it would send,
// blocks per destination rank (`send_rows`), each row's token (rows of one token are copies of
// the same input) and its weight in the combined output, and the rows each source sends it
// (`recv_rows`). Only one pass at a time: no chunking.
//
// One forward and its backward:
//   dispatch          x[token] once per (token, node)  ->  rows in the flat receive layout
//   combine           expert outputs                   ->  y[t] = Σ weight · output over t's rows
//   dispatch_gradient dy[token] once per (token, node) ->  weight · dy in the receive layout
//   combine_gradient  input gradients                  ->  dx[t] = Σ over t's rows, and per row
//                                                          dy · output (the weight's gradient)
// Backward needs, per row, dy·output for the gate weight's gradient; the source no longer holds
// the individual outputs (only the per-node sums came back), so the relay keeps them from the
// forward (HierarchicalRoute::fan_output), computes the dot products when dy arrives, and sends
// one float per row back beside the partial input gradients: dy and dx still cross once per
// (token, node), plus 4 bytes per row.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "comm/communicator.hpp"
#include "comm/node_topology.hpp"

namespace moe::comm {

// What one forward's exchange leaves for its backward; keep one per forward in flight. Reusing it
// for calls of the same shape allocates nothing.
struct HierarchicalRoute {
  // Source side.
  std::vector<std::int64_t> send_rows, recv_rows;  // [P] the flat exchange's rows per rank
  std::vector<std::int64_t> unique_token;  // the tokens sent to node 0, then node 1, ...
  std::vector<std::int64_t> unique_start;  // [N+1] where each node's tokens start
  // Relay side: rows from the sources (n, l) of every node n, this rank's local index l.
  std::vector<std::int64_t> relay_counts;  // [N*(R+1)] from node n: unique rows, then rows per local rank
  std::vector<std::int64_t> relay_start;   // [N+1] first unique row of each source node
  // The rows this relay fans out, ordered by destination local rank, then source node, then the
  // source's order: the unique row each copies, its source node, its place in that source's
  // rows for this node, its weight, and the expert output that came back for it.
  std::vector<std::int64_t> fan_unique;
  std::vector<std::int32_t> fan_node;
  std::vector<std::int64_t> fan_entry;
  std::vector<float> fan_weight;
  std::vector<float> fan_output;
};

// Payload this rank sent to ranks on other nodes (dispatch and combine of one forward; the count
// messages that precede them are not included).
struct InterNodeTraffic {
  std::int64_t bytes = 0;
  std::int64_t messages = 0;  // non-empty blocks to a rank on another node
};

class HierarchicalExchange {
 public:
  // Collective over `comm` (two splits: the ranks of this node, the ranks of this local index).
  // `comm` must outlive this object.
  HierarchicalExchange(Communicator& comm, const NodeTopology& topology, std::int64_t width);

  // All operations below are collective over the communicator given at construction.
  // tokens: [T, width]; send_rows [P], row_token and row_weight [Σ send_rows] in the flat send
  // layout; recv_rows [P]; recv: [Σ recv_rows, width].
  void dispatch(HierarchicalRoute& route, std::span<const float> tokens,
                std::span<const std::int64_t> send_rows, std::span<const std::int64_t> row_token,
                std::span<const float> row_weight, std::span<const std::int64_t> recv_rows,
                std::span<float> recv);
  // out: the experts' outputs in the receive layout; y: [T, width], overwritten.
  void combine(HierarchicalRoute& route, std::span<const float> out, std::span<float> y);
  // dy: [T, width]; recv receives weight · dy for each row.
  void dispatch_gradient(HierarchicalRoute& route, std::span<const float> dy, std::span<float> recv);
  // dx_rows: the rows' input gradients in the receive layout; dx: [T, width], overwritten;
  // row_dot: [Σ send_rows], dy · output of each row of the flat send layout.
  void combine_gradient(HierarchicalRoute& route, std::span<const float> dx_rows,
                        std::span<float> dx, std::span<float> row_dot);

  // Names the next operations for the watchdog (both sub-communicators).
  void set_context(const OperationContext& context);
  // Of the last dispatch and combine.
  InterNodeTraffic forward_traffic() const { return traffic_; }

 private:
  // The network step: send_bytes_ in blocks of cross_send_ to the rank of this local index on
  // each node, into recv_bytes_ (cross_recv_); `count` adds it to the forward's traffic.
  void cross(bool count);
  // The relay's fan-out of fan_rows_ into the flat receive layout, and its inverse into `back`.
  void fan_out(const HierarchicalRoute& route, std::span<float> recv);
  void fan_in(const HierarchicalRoute& route, std::span<const float> out, float* back);
  // partial_ = Σ over fan rows of (weight ·) rows, per unique row of each source node.
  void sum_per_unique(const HierarchicalRoute& route, const float* rows, bool weighted);
  void layout_counts(const HierarchicalRoute& route);

  NodeTopology topology_;
  std::int64_t width_;
  int node_, local_;
  std::unique_ptr<Communicator> node_comm_, cross_comm_;
  InterNodeTraffic traffic_;

  // Workspace, grown to the largest call.
  std::vector<std::int32_t> stamp_, slot_, row_unique_;
  std::vector<std::int64_t> count_send_, recv_start_;
  std::vector<std::size_t> cross_send_, cross_recv_, node_send_, node_recv_;
  std::vector<std::byte> send_bytes_, recv_bytes_;
  std::vector<float> relay_rows_, fan_rows_, fan_back_, fan_dot_, stage_, partial_;
};

}  // namespace moe::comm
