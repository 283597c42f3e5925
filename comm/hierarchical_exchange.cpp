#include "comm/hierarchical_exchange.hpp"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

namespace moe::comm {

namespace {

using Index = std::int64_t;

template <class T>
void grow(std::vector<T>& v, Index n) {
  if (static_cast<Index>(v.size()) < n) v.resize(static_cast<std::size_t>(n));
}

// memcpy of a block that may be empty: an empty vector's data() may be null, which memcpy must
// not be given even for zero bytes (UBSan reports it).
void copy_block(void* to, const void* from, std::size_t bytes) {
  if (bytes > 0) std::memcpy(to, from, bytes);
}

// g · row in 16 lanes added pairwise at the end: vectorizable, and the same order every call.
float dot_row(const float* g, const float* row, Index width) {
  constexpr int kLanes = 16;
  float lanes[kLanes] = {};
  Index c = 0;
  for (; c + kLanes <= width; c += kLanes) {
    for (int l = 0; l < kLanes; ++l) lanes[l] += g[c + l] * row[c + l];
  }
  for (; c < width; ++c) lanes[c % kLanes] += g[c] * row[c];
  for (int half = kLanes / 2; half > 0; half /= 2) {
    for (int l = 0; l < half; ++l) lanes[l] += lanes[l + half];
  }
  return lanes[0];
}

// One row of metadata per fanned-out row: its unique row and its weight.
struct Entry {
  std::int32_t unique;
  float weight;
};

}  // namespace

namespace {

// The relays pair rank (n, l) with (m, l): that needs blocks.
const NodeTopology& blocks_of(const NodeTopology& topology) {
  if (const std::string problem = blocks_problem(topology); !problem.empty()) {
    throw std::invalid_argument(problem);
  }
  return topology;
}

}  // namespace

HierarchicalExchange::HierarchicalExchange(Communicator& comm, const NodeTopology& topology,
                                           std::int64_t width)
    : topology_(blocks_of(topology)), width_(width), node_(topology.node_of(comm.rank())),
      local_(topology.local_rank_of(comm.rank())) {
  node_comm_ = comm.split(node_, local_);
  cross_comm_ = comm.split(local_, node_);
}

void HierarchicalExchange::set_context(const OperationContext& context) {
  node_comm_->set_context(context);
  cross_comm_->set_context(context);
}

void HierarchicalExchange::cross(bool count) {
  cross_comm_->alltoallv(send_bytes_.data(), cross_send_, recv_bytes_.data(), cross_recv_);
  if (!count) return;
  for (int m = 0; m < topology_.num_nodes; ++m) {
    const std::size_t bytes = cross_send_[static_cast<std::size_t>(m)];
    if (m == node_ || bytes == 0) continue;
    traffic_.bytes += static_cast<Index>(bytes);
    ++traffic_.messages;
  }
}

// Sizes of the relay's intra-node steps, and where each source's rows start in the flat receive
// layout.
void HierarchicalExchange::layout_counts(const HierarchicalRoute& route) {
  const int nodes = topology_.num_nodes, per_node = topology_.ranks_per_node;
  const auto row_bytes = static_cast<std::size_t>(width_) * sizeof(float);
  node_send_.assign(static_cast<std::size_t>(per_node), 0);
  node_recv_.assign(static_cast<std::size_t>(per_node), 0);
  for (int j = 0; j < per_node; ++j) {
    for (int n = 0; n < nodes; ++n) {
      node_send_[j] += static_cast<std::size_t>(route.relay_counts[n * (per_node + 1) + 1 + j]) * row_bytes;
      node_recv_[j] += static_cast<std::size_t>(route.recv_rows[n * per_node + j]) * row_bytes;
    }
  }
  recv_start_.assign(route.recv_rows.size() + 1, 0);
  for (std::size_t s = 0; s < route.recv_rows.size(); ++s) recv_start_[s + 1] = recv_start_[s] + route.recv_rows[s];
}

void HierarchicalExchange::dispatch(HierarchicalRoute& route, std::span<const float> tokens,
                                    std::span<const std::int64_t> send_rows,
                                    std::span<const std::int64_t> row_token,
                                    std::span<const float> row_weight,
                                    std::span<const std::int64_t> recv_rows, std::span<float> recv) {
  const int nodes = topology_.num_nodes, per_node = topology_.ranks_per_node;
  const Index width = width_, num_tokens = static_cast<Index>(tokens.size()) / width;
  const std::size_t row_bytes = static_cast<std::size_t>(width) * sizeof(float);
  traffic_ = {};
  route.send_rows.assign(send_rows.begin(), send_rows.end());
  route.recv_rows.assign(recv_rows.begin(), recv_rows.end());

  // Each destination node's rows in send order; a token's first row there gives its unique row.
  grow(stamp_, num_tokens);
  grow(slot_, num_tokens);
  grow(row_unique_, static_cast<Index>(row_token.size()));
  std::fill_n(stamp_.begin(), num_tokens, -1);
  route.unique_token.clear();
  route.unique_start.assign(static_cast<std::size_t>(nodes + 1), 0);
  count_send_.assign(static_cast<std::size_t>(nodes * (per_node + 1)), 0);
  Index row = 0;
  for (int m = 0; m < nodes; ++m) {
    const Index first_unique = static_cast<Index>(route.unique_token.size());
    for (int j = 0; j < per_node; ++j) {
      const Index rows = send_rows[static_cast<std::size_t>(m * per_node + j)];
      count_send_[static_cast<std::size_t>(m * (per_node + 1) + 1 + j)] = rows;
      for (Index i = 0; i < rows; ++i, ++row) {
        const Index t = row_token[static_cast<std::size_t>(row)];
        if (stamp_[t] != m) {
          stamp_[t] = m;
          slot_[t] = static_cast<std::int32_t>(static_cast<Index>(route.unique_token.size()) - first_unique);
          route.unique_token.push_back(t);
        }
        row_unique_[row] = slot_[t];
      }
    }
    route.unique_start[m + 1] = static_cast<Index>(route.unique_token.size());
    count_send_[static_cast<std::size_t>(m * (per_node + 1))] = route.unique_start[m + 1] - route.unique_start[m];
  }

  // Counts to every node's relay: its unique rows and the rows for each of its ranks.
  route.relay_counts.resize(count_send_.size());
  cross_comm_->alltoall(reinterpret_cast<const std::byte*>(count_send_.data()),
                        reinterpret_cast<std::byte*>(route.relay_counts.data()),
                        static_cast<std::size_t>(per_node + 1) * sizeof(Index));

  // Payload to node m: its unique rows, then one entry per row (send order).
  const auto block_rows = [&](const Index* counts) {
    Index rows = 0;
    for (int j = 0; j < per_node; ++j) rows += counts[1 + j];
    return rows;
  };
  cross_send_.assign(static_cast<std::size_t>(nodes), 0);
  cross_recv_.assign(static_cast<std::size_t>(nodes), 0);
  Index send_total = 0, recv_total = 0;
  for (int m = 0; m < nodes; ++m) {
    const Index* out = count_send_.data() + m * (per_node + 1);
    const Index* in = route.relay_counts.data() + m * (per_node + 1);
    cross_send_[m] = static_cast<std::size_t>(out[0]) * row_bytes + static_cast<std::size_t>(block_rows(out)) * sizeof(Entry);
    cross_recv_[m] = static_cast<std::size_t>(in[0]) * row_bytes + static_cast<std::size_t>(block_rows(in)) * sizeof(Entry);
    send_total += static_cast<Index>(cross_send_[m]);
    recv_total += static_cast<Index>(cross_recv_[m]);
  }
  grow(send_bytes_, send_total);
  grow(recv_bytes_, recv_total);
  std::byte* at = send_bytes_.data();
  row = 0;
  for (int m = 0; m < nodes; ++m) {
    for (Index u = route.unique_start[m]; u < route.unique_start[m + 1]; ++u, at += row_bytes) {
      std::memcpy(at, tokens.data() + route.unique_token[u] * width, row_bytes);
    }
    const Index rows = block_rows(count_send_.data() + m * (per_node + 1));
    for (Index i = 0; i < rows; ++i, ++row, at += sizeof(Entry)) {
      const Entry entry{row_unique_[row], row_weight[static_cast<std::size_t>(row)]};
      std::memcpy(at, &entry, sizeof entry);
    }
  }
  cross(true);

  // The relay: unique rows of every source node side by side, and the fan-out order (destination
  // local rank, then source node, then the source's order).
  route.relay_start.assign(static_cast<std::size_t>(nodes + 1), 0);
  for (int n = 0; n < nodes; ++n) route.relay_start[n + 1] = route.relay_start[n] + route.relay_counts[n * (per_node + 1)];
  grow(relay_rows_, route.relay_start[nodes] * width);
  Index fan_total = 0;
  for (int n = 0; n < nodes; ++n) fan_total += block_rows(route.relay_counts.data() + n * (per_node + 1));
  route.fan_unique.resize(static_cast<std::size_t>(fan_total));
  route.fan_node.resize(static_cast<std::size_t>(fan_total));
  route.fan_entry.resize(static_cast<std::size_t>(fan_total));
  route.fan_weight.resize(static_cast<std::size_t>(fan_total));
  grow(fan_rows_, fan_total * width);
  // Where each source node's block starts in recv_bytes_.
  count_send_.assign(static_cast<std::size_t>(nodes + 1), 0);
  for (int n = 0; n < nodes; ++n) count_send_[n + 1] = count_send_[n] + static_cast<Index>(cross_recv_[n]);
  for (int n = 0; n < nodes; ++n) {
    const Index unique = route.relay_counts[n * (per_node + 1)];
    copy_block(relay_rows_.data() + route.relay_start[n] * width, recv_bytes_.data() + count_send_[n],
                static_cast<std::size_t>(unique) * row_bytes);
  }
  Index f = 0;
  for (int j = 0; j < per_node; ++j) {
    for (int n = 0; n < nodes; ++n) {
      const Index* counts = route.relay_counts.data() + n * (per_node + 1);
      Index entry = 0;
      for (int q = 0; q < j; ++q) entry += counts[1 + q];
      const std::byte* entries = recv_bytes_.data() + count_send_[n] + static_cast<std::size_t>(counts[0]) * row_bytes;
      for (Index i = 0; i < counts[1 + j]; ++i, ++entry, ++f) {
        Entry e{};
        std::memcpy(&e, entries + static_cast<std::size_t>(entry) * sizeof(Entry), sizeof e);
        const Index unique = route.relay_start[n] + e.unique;
        route.fan_unique[f] = unique;
        route.fan_node[f] = n;
        route.fan_entry[f] = entry;
        route.fan_weight[f] = e.weight;
        std::memcpy(fan_rows_.data() + f * width, relay_rows_.data() + unique * width, row_bytes);
      }
    }
  }
  layout_counts(route);
  fan_out(route, recv);
}

// The relay sends each local rank its rows (source node after source node); they arrive relay by
// relay and are put in the flat layout (source rank n*R + l).
void HierarchicalExchange::fan_out(const HierarchicalRoute& route, std::span<float> recv) {
  const int nodes = topology_.num_nodes, per_node = topology_.ranks_per_node;
  const Index width = width_;
  grow(stage_, recv_start_.back() * width);
  node_comm_->alltoallv(reinterpret_cast<const std::byte*>(fan_rows_.data()), node_send_,
                        reinterpret_cast<std::byte*>(stage_.data()), node_recv_);
  const float* from = stage_.data();
  for (int l = 0; l < per_node; ++l) {
    for (int n = 0; n < nodes; ++n) {
      const int s = n * per_node + l;
      const Index rows = route.recv_rows[static_cast<std::size_t>(s)];
      std::copy_n(from, rows * width, recv.data() + recv_start_[s] * width);
      from += rows * width;
    }
  }
}

void HierarchicalExchange::fan_in(const HierarchicalRoute& route, std::span<const float> out, float* back) {
  const int nodes = topology_.num_nodes, per_node = topology_.ranks_per_node;
  const Index width = width_;
  grow(stage_, recv_start_.back() * width);
  float* to = stage_.data();
  for (int l = 0; l < per_node; ++l) {
    for (int n = 0; n < nodes; ++n) {
      const int s = n * per_node + l;
      const Index rows = route.recv_rows[static_cast<std::size_t>(s)];
      std::copy_n(out.data() + recv_start_[s] * width, rows * width, to);
      to += rows * width;
    }
  }
  node_comm_->alltoallv(reinterpret_cast<const std::byte*>(stage_.data()), node_recv_,
                        reinterpret_cast<std::byte*>(back), node_send_);
}

void HierarchicalExchange::sum_per_unique(const HierarchicalRoute& route, const float* rows, bool weighted) {
  const Index width = width_, unique = route.relay_start.back();
  grow(partial_, unique * width);
  std::fill_n(partial_.begin(), unique * width, 0.0f);
  for (std::size_t f = 0; f < route.fan_unique.size(); ++f) {
    float* sum = partial_.data() + route.fan_unique[f] * width;
    const float* row = rows + static_cast<Index>(f) * width;
    const float w = weighted ? route.fan_weight[f] : 1.0f;
    for (Index i = 0; i < width; ++i) sum[i] += w * row[i];
  }
}

void HierarchicalExchange::combine(HierarchicalRoute& route, std::span<const float> out, std::span<float> y) {
  const int nodes = topology_.num_nodes;
  const Index width = width_;
  const std::size_t row_bytes = static_cast<std::size_t>(width) * sizeof(float);
  layout_counts(route);
  grow(route.fan_output, static_cast<Index>(route.fan_unique.size()) * width);
  fan_in(route, out, route.fan_output.data());
  sum_per_unique(route, route.fan_output.data(), true);

  // One partial sum per (token, node) back to its source.
  for (int n = 0; n < nodes; ++n) {
    cross_send_[n] = static_cast<std::size_t>(route.relay_start[n + 1] - route.relay_start[n]) * row_bytes;
    cross_recv_[n] = static_cast<std::size_t>(route.unique_start[n + 1] - route.unique_start[n]) * row_bytes;
  }
  grow(send_bytes_, route.relay_start[nodes] * static_cast<Index>(row_bytes));
  grow(recv_bytes_, route.unique_start[nodes] * static_cast<Index>(row_bytes));
  copy_block(send_bytes_.data(), partial_.data(), static_cast<std::size_t>(route.relay_start[nodes]) * row_bytes);
  cross(true);

  std::fill(y.begin(), y.end(), 0.0f);
  const float* sums = reinterpret_cast<const float*>(recv_bytes_.data());
  for (std::size_t u = 0; u < route.unique_token.size(); ++u) {
    float* dst = y.data() + route.unique_token[u] * width;
    const float* src = sums + static_cast<Index>(u) * width;
    for (Index i = 0; i < width; ++i) dst[i] += src[i];
  }
}

void HierarchicalExchange::dispatch_gradient(HierarchicalRoute& route, std::span<const float> dy,
                                             std::span<float> recv) {
  const int nodes = topology_.num_nodes;
  const Index width = width_;
  const std::size_t row_bytes = static_cast<std::size_t>(width) * sizeof(float);
  layout_counts(route);
  for (int m = 0; m < nodes; ++m) {
    cross_send_[m] = static_cast<std::size_t>(route.unique_start[m + 1] - route.unique_start[m]) * row_bytes;
    cross_recv_[m] = static_cast<std::size_t>(route.relay_start[m + 1] - route.relay_start[m]) * row_bytes;
  }
  grow(send_bytes_, route.unique_start[nodes] * static_cast<Index>(row_bytes));
  grow(recv_bytes_, route.relay_start[nodes] * static_cast<Index>(row_bytes));
  for (std::size_t u = 0; u < route.unique_token.size(); ++u) {
    std::memcpy(send_bytes_.data() + u * row_bytes, dy.data() + route.unique_token[u] * width, row_bytes);
  }
  cross(false);

  // Each row's weight · dy goes to its expert; dy · output stays here until the way back.
  const auto fan_total = static_cast<Index>(route.fan_unique.size());
  grow(fan_rows_, fan_total * width);
  grow(fan_dot_, fan_total);
  const float* grads = reinterpret_cast<const float*>(recv_bytes_.data());
  for (Index f = 0; f < fan_total; ++f) {
    const float* g = grads + route.fan_unique[f] * width;
    const float* output = route.fan_output.data() + f * width;
    float* row = fan_rows_.data() + f * width;
    const float w = route.fan_weight[f];
    for (Index i = 0; i < width; ++i) row[i] = w * g[i];
    fan_dot_[f] = dot_row(g, output, width);
  }
  fan_out(route, recv);
}

void HierarchicalExchange::combine_gradient(HierarchicalRoute& route, std::span<const float> dx_rows,
                                            std::span<float> dx, std::span<float> row_dot) {
  const int nodes = topology_.num_nodes, per_node = topology_.ranks_per_node;
  const Index width = width_;
  const std::size_t row_bytes = static_cast<std::size_t>(width) * sizeof(float);
  layout_counts(route);
  const auto fan_total = static_cast<Index>(route.fan_unique.size());
  grow(fan_back_, fan_total * width);
  fan_in(route, dx_rows, fan_back_.data());
  sum_per_unique(route, fan_back_.data(), false);

  // To source node n: its partial input gradients, then dy · output for each of its rows in the
  // order it sent them.
  const auto rows_of = [&](const Index* counts) {
    Index rows = 0;
    for (int j = 0; j < per_node; ++j) rows += counts[j];
    return rows;
  };
  Index send_total = 0, recv_total = 0;
  count_send_.assign(static_cast<std::size_t>(nodes + 1), 0);
  for (int n = 0; n < nodes; ++n) {
    const Index unique = route.relay_start[n + 1] - route.relay_start[n];
    const Index rows = rows_of(route.relay_counts.data() + n * (per_node + 1) + 1);
    cross_send_[n] = static_cast<std::size_t>(unique) * row_bytes + static_cast<std::size_t>(rows) * sizeof(float);
    const Index mine = route.unique_start[n + 1] - route.unique_start[n];
    const Index sent = rows_of(route.send_rows.data() + n * per_node);
    cross_recv_[n] = static_cast<std::size_t>(mine) * row_bytes + static_cast<std::size_t>(sent) * sizeof(float);
    count_send_[n + 1] = count_send_[n] + static_cast<Index>(cross_send_[n]);
    send_total += static_cast<Index>(cross_send_[n]);
    recv_total += static_cast<Index>(cross_recv_[n]);
  }
  grow(send_bytes_, send_total);
  grow(recv_bytes_, recv_total);
  for (int n = 0; n < nodes; ++n) {
    const Index unique = route.relay_start[n + 1] - route.relay_start[n];
    copy_block(send_bytes_.data() + count_send_[n], partial_.data() + route.relay_start[n] * width,
                static_cast<std::size_t>(unique) * row_bytes);
  }
  for (Index f = 0; f < fan_total; ++f) {
    const int n = route.fan_node[f];
    const Index unique = route.relay_start[n + 1] - route.relay_start[n];
    copy_block(send_bytes_.data() + count_send_[n] + static_cast<std::size_t>(unique) * row_bytes +
                    static_cast<std::size_t>(route.fan_entry[f]) * sizeof(float),
                &fan_dot_[f], sizeof(float));
  }
  cross(false);

  std::fill(dx.begin(), dx.end(), 0.0f);
  const std::byte* at = recv_bytes_.data();
  Index row = 0;
  for (int m = 0; m < nodes; ++m) {
    for (Index u = route.unique_start[m]; u < route.unique_start[m + 1]; ++u, at += row_bytes) {
      const float* src = reinterpret_cast<const float*>(at);
      float* dst = dx.data() + route.unique_token[u] * width;
      for (Index i = 0; i < width; ++i) dst[i] += src[i];
    }
    const Index sent = rows_of(route.send_rows.data() + m * per_node);
    copy_block(row_dot.data() + row, at, static_cast<std::size_t>(sent) * sizeof(float));
    at += static_cast<std::size_t>(sent) * sizeof(float);
    row += sent;
  }
}

}  // namespace moe::comm
