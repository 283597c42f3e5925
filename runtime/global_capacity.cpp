#include "runtime/global_capacity.hpp"

#include <algorithm>

#include "runtime/error.hpp"

namespace moe {
namespace {

using Index = std::int64_t;

template <class T>
void grow(std::vector<T>& v, std::size_t n) {
  if (v.size() < n) v.resize(n);
}

}  // namespace

void GlobalCapacity::decide(comm::Communicator& comm, const MoeConfig& config,
                            const Routing& routing, const DispatchPlan& plan,
                            const std::string& local_error) {
  const Index num_experts = config.num_experts, k = config.top_k;
  const int size = comm.size(), rank = comm.rank();
  const Index width = num_experts * k + 2;
  mine_.assign(static_cast<std::size_t>(width), 0);
  mine_[0] = local_error.empty() ? 0 : 1;
  mine_[1] = routing.num_tokens;
  for (Index a = 0; a < routing.num_tokens * k; ++a) ++mine_[2 + routing.experts[a] * k + a % k];
  all_.resize(static_cast<std::size_t>(width * size));
  comm.allgather(reinterpret_cast<const std::byte*>(mine_.data()), reinterpret_cast<std::byte*>(all_.data()),
                 static_cast<std::size_t>(width) * sizeof(Index));
  bool any_error = false;
  group_tokens_ = first_token_ = 0;
  for (int r = 0; r < size; ++r) {
    any_error = any_error || all_[r * width] != 0;
    if (r < rank) first_token_ += all_[r * width + 1];
    group_tokens_ += all_[r * width + 1];
  }
  if (any_error) raise_agreed_error(comm, local_error);

  capacity_ = expert_capacity(config, group_tokens_);
  caps_.assign(static_cast<std::size_t>(num_experts), 0);
  bytes_sent_ = 0;
  if (config.drop_policy == DropPolicy::position) {
    position_caps(config, rank, size);
  } else {
    score_caps(comm, config, routing, plan);
  }
}

// The group's order is (choice j, global token g): rank r's assignments of expert e with choice j
// come after every rank's choices < j and after ranks < r's choice j, and among themselves in
// token order. Those before position C are kept.
void GlobalCapacity::position_caps(const MoeConfig& config, int rank, int size) {
  const Index num_experts = config.num_experts, k = config.top_k, width = num_experts * k + 2;
  const auto count = [&](int r, Index e, Index j) { return all_[r * width + 2 + e * k + j]; };
  for (Index e = 0; e < num_experts; ++e) {
    Index earlier_choices = 0, cap = 0;
    for (Index j = 0; j < k; ++j) {
      Index start = earlier_choices;
      for (int r = 0; r < rank; ++r) start += count(r, e, j);
      cap += std::clamp(capacity_ - start, Index{0}, count(rank, e, j));
      for (int r = 0; r < size; ++r) earlier_choices += count(r, e, j);
    }
    caps_[static_cast<std::size_t>(e)] = cap;
  }
}

void GlobalCapacity::score_caps(comm::Communicator& comm, const MoeConfig& config,
                                const Routing& routing, const DispatchPlan& plan) {
  const Index num_experts = config.num_experts, k = config.top_k, width = num_experts * k + 2;
  const int size = comm.size(), rank = comm.rank();
  // Candidates source s sends for expert e: its best min(listed, C).
  const auto sent = [&](int s, Index e) {
    Index listed = 0;
    for (Index j = 0; j < k; ++j) listed += all_[s * width + 2 + e * k + j];
    return std::min(listed, capacity_);
  };
  send_bytes_.assign(static_cast<std::size_t>(size), 0);
  recv_bytes_.assign(static_cast<std::size_t>(size), 0);
  const Index first_local = first_expert_of(rank, num_experts, size);
  const Index local = num_experts_of(rank, num_experts, size);
  Index to_send = 0, to_receive = 0;
  for (Index e = 0; e < num_experts; ++e) {
    const Index n = sent(rank, e);
    send_bytes_[static_cast<std::size_t>(owner_of_expert(e, num_experts, size))] += static_cast<std::size_t>(n) * sizeof(Candidate);
    to_send += n;
  }
  for (int s = 0; s < size; ++s) {
    for (Index e = first_local; e < first_local + local; ++e) {
      recv_bytes_[static_cast<std::size_t>(s)] += static_cast<std::size_t>(sent(s, e)) * sizeof(Candidate);
      to_receive += sent(s, e);
    }
  }
  // Growing may fail on one rank: agreed before the others enter the exchange.
  std::string failure;
  try {
    grow(send_, static_cast<std::size_t>(to_send));
    grow(recv_, static_cast<std::size_t>(to_receive));
    grow(merged_, static_cast<std::size_t>(to_receive));
  } catch (const std::bad_alloc&) {
    failure = "out of memory growing the global capacity's buffers";
  }
  agree_on_errors(comm, failure);
  Index i = 0;
  for (Index e = 0; e < num_experts; ++e) {
    for (Index n = 0; n < sent(rank, e); ++n) {
      const Index a = plan.order[plan.order_start[e] + n];
      send_[static_cast<std::size_t>(i++)] = {routing.weights[a], static_cast<std::int32_t>(a % k), first_token_ + a / k};
    }
  }
  bytes_sent_ = to_send * static_cast<Index>(sizeof(Candidate));
  comm.alltoallv(reinterpret_cast<const std::byte*>(send_.data()), send_bytes_,
                 reinterpret_cast<std::byte*>(recv_.data()), recv_bytes_);

  // The owner ranks each local expert's candidates from every source by (weight desc, g, j) and
  // counts how many of each source's fall among the best C.
  const Index max_local = (num_experts + size - 1) / size;
  kept_send_.assign(static_cast<std::size_t>(size * max_local), 0);
  kept_recv_.resize(kept_send_.size());
  for (Index el = 0; el < local; ++el) {
    Index merged = 0, at = 0;
    for (int s = 0; s < size; ++s) {
      for (Index e = first_local; e < first_local + local; ++e) {
        const Index n = sent(s, e);
        // This expert's candidates from source s.
        if (e == first_local + el) {
          for (Index c = 0; c < n; ++c) merged_[static_cast<std::size_t>(merged++)] = at + c;
        }
        at += n;
      }
    }
    const auto better = [&](Index a, Index b) {
      const Candidate& x = recv_[static_cast<std::size_t>(a)];
      const Candidate& y = recv_[static_cast<std::size_t>(b)];
      if (x.weight != y.weight) return x.weight > y.weight;
      if (x.token != y.token) return x.token < y.token;
      return x.choice < y.choice;
    };
    const Index keep = std::min(merged, capacity_);
    std::partial_sort(merged_.begin(), merged_.begin() + keep, merged_.begin() + merged, better);
    // Which source sent a kept candidate: sources' blocks are consecutive in recv_.
    for (Index c = 0; c < keep; ++c) {
      Index index = merged_[static_cast<std::size_t>(c)], s = 0, block_end = 0;
      for (; s < size; ++s) {
        block_end += static_cast<Index>(recv_bytes_[static_cast<std::size_t>(s)] / sizeof(Candidate));
        if (index < block_end) break;
      }
      ++kept_send_[static_cast<std::size_t>(s * max_local + el)];
    }
  }
  comm.alltoall(reinterpret_cast<const std::byte*>(kept_send_.data()),
                reinterpret_cast<std::byte*>(kept_recv_.data()),
                static_cast<std::size_t>(max_local) * sizeof(Index));
  for (int p = 0; p < size; ++p) {
    const Index first = first_expert_of(p, num_experts, size);
    for (Index el = 0; el < num_experts_of(p, num_experts, size); ++el) {
      caps_[static_cast<std::size_t>(first + el)] = kept_recv_[static_cast<std::size_t>(p * max_local + el)];
    }
  }
  bytes_sent_ += size * max_local * static_cast<Index>(sizeof(Index));
}

}  // namespace moe
