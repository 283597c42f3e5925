#include "runtime/plan_agreement.hpp"

#include <algorithm>
#include <chrono>

#include "runtime/error.hpp"
#include "runtime/local_failure.hpp"

namespace moe {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

}  // namespace

void agree_on_config(comm::Communicator& comm, const MoeConfig& config) {
  // One hash per field; ranks whose hash differs from rank 0's say their value, and the agreed
  // error groups equal values with the ranks that hold them.
  const int size = comm.size();
  const auto fields = config.fields();
  std::vector<std::uint64_t> mine(fields.size()), all(fields.size() * static_cast<std::size_t>(size));
  for (std::size_t i = 0; i < fields.size(); ++i) {
    std::uint64_t h = 1469598103934665603ull;
    for (unsigned char c : fields[i].second) h = (h ^ c) * 1099511628211ull;
    mine[i] = h;
  }
  comm.allgather(reinterpret_cast<const std::byte*>(mine.data()),
                 reinterpret_cast<std::byte*>(all.data()), mine.size() * sizeof(std::uint64_t));
  std::string differing;
  for (std::size_t i = 0; i < fields.size(); ++i) {
    bool same = true;
    for (int r = 1; r < size; ++r) same = same && all[static_cast<std::size_t>(r) * fields.size() + i] == all[i];
    if (same) continue;
    if (!differing.empty()) differing += ", ";
    differing += fields[i].first + "=" + fields[i].second;
  }
  if (differing.empty()) return;
  try {
    raise_agreed_error(comm, differing);
  } catch (const Error& e) {
    throw Error(std::string("the ranks of layer '") + config.label +
                "' were given different configurations: " + e.what());
  }
}

std::string PlanAgreement::agree(comm::Communicator& comm, const MoeConfig& config, int chunks,
                                 const Routing& given, std::string local_error, DispatchPlan& plan,
                                 double& count_exchange_seconds, PhaseNamer phase) {
  const int p_size = comm.size(), rank = comm.rank();
  const std::int64_t local = num_experts_of(rank, config.num_experts, p_size);
  count_exchange_seconds = 0;
  const auto name_phase = [&](const char* name) {
    if (phase) phase(name);
  };
  const Routing none{0, {}, {}};
  // Anything that fails here (an allocation, say) travels with the counts like a bad shape.
  if (local_error.empty()) {
    local_error = failure_of([&] { rank_assignments(config, given.experts, given.weights, given.num_tokens, plan); });
  }
  // A rank with an error takes part in the collectives below with an empty batch.
  const Routing& routing = local_error.empty() ? given : none;
  if (!local_error.empty()) rank_assignments(config, routing.experts, routing.weights, 0, plan);
  const std::int64_t num_tokens = routing.num_tokens;

  // Capacity over the whole group: decided before anything moves (runtime/global_capacity.hpp);
  // every rank's error is raised there.
  std::span<const std::int64_t> caps;
  const bool global = config.capacity_scope == CapacityScope::global && !config.dropless();
  if (global) {
    name_phase("global capacity");
    const auto start = Clock::now();
    global_capacity_.decide(comm, config, routing, plan, local_error);
    count_exchange_seconds = seconds_since(start);
    caps = global_capacity_.caps();
  }

  if (config.exchange == ExchangeKind::padded) {
    // No count exchange: every list is padded to the largest capacity of the group: that of the
    // largest batch, learned (with any rank's error) from one two-integer all-reduce, or the
    // group's own with global capacity.
    std::int64_t slots = 0;
    if (global) {
      slots = global_capacity_.capacity();
    } else {
      std::int64_t agreed[2] = {local_error.empty() ? 0 : 1, num_tokens};
      name_phase("padded slot count");
      const auto start = Clock::now();
      comm.allreduce(std::span<std::int64_t>(agreed), comm::ReduceOp::max);
      count_exchange_seconds += seconds_since(start);
      if (agreed[0] != 0) raise_agreed_error(comm, local_error);
      slots = expert_capacity(config, agreed[1]);
    }
    // A failure here comes after the agreement: it is returned for the next one to report.
    return failure_of([&] {
      build_plan(config, p_size, rank, routing.experts, num_tokens, chunks, slots, caps, plan);
      recv_counts_.assign(static_cast<std::size_t>(p_size * local), slots);
      set_receive_counts(plan, recv_counts_);
    });
  }

  if (local_error.empty()) {
    local_error = failure_of([&] {
      build_plan(config, p_size, rank, routing.experts, num_tokens, chunks, -1, caps, plan);
    });
  }
  if (!local_error.empty()) {
    rank_assignments(config, none.experts, none.weights, 0, plan);
    build_plan(config, p_size, rank, none.experts, 0, chunks, -1, {}, plan);
  }
  // Each rank tells each destination how many rows it sends to every one of its local experts,
  // plus a status word: a rank with a local error sends 1 there, so every rank learns of it from
  // this exchange and all raise the same error instead of some entering the payload exchange.
  // Blocks have room for the most experts any rank owns (ranks may own different counts).
  const std::int64_t block = (config.num_experts + p_size - 1) / p_size + 1;
  count_send_.assign(static_cast<std::size_t>(p_size * block), 0);
  count_recv_.resize(count_send_.size());
  for (int p = 0; p < p_size; ++p) {
    count_send_[static_cast<std::size_t>(p * block)] = local_error.empty() ? 0 : 1;
    std::copy_n(plan.kept.begin() + first_expert_of(p, config.num_experts, p_size),
                num_experts_of(p, config.num_experts, p_size), count_send_.begin() + p * block + 1);
  }
  name_phase("count exchange");
  const auto start = Clock::now();
  comm.alltoall(reinterpret_cast<const std::byte*>(count_send_.data()),
                reinterpret_cast<std::byte*>(count_recv_.data()),
                static_cast<std::size_t>(block) * sizeof(std::int64_t));
  count_exchange_seconds += seconds_since(start);
  bool any_error = false;
  recv_counts_.resize(static_cast<std::size_t>(p_size * local));
  for (int s = 0; s < p_size; ++s) {
    any_error = any_error || count_recv_[static_cast<std::size_t>(s * block)] != 0;
    std::copy_n(count_recv_.begin() + s * block + 1, local, recv_counts_.begin() + s * local);
  }
  if (any_error) raise_agreed_error(comm, local_error);
  return failure_of([&] { set_receive_counts(plan, recv_counts_); });
}

}  // namespace moe
