// Capacity decided over the whole expert-parallel group (capacity_scope = global, SPEC.md section
// 4), before any row moves, so no row that will be dropped crosses the network.
//
// An expert keeps a prefix of every source rank's list of its assignments (the group's order
// restricted to one source is that source's own order), so each source only needs to learn how
// long its kept prefix is, per expert:
//   1. one allgather of every rank's token count and per-(expert, choice) assignment counts
//      (E*k+2 integers a rank). With drop_policy = position this is enough: every source computes
//      where its assignments fall in the group's (choice, global token) order.
//   2. drop_policy = score: each source sends the owner of each expert the ranking keys
//      (weight, global token, choice) of the at most C best assignments of its list (16 bytes
//      each; no later one can be among the group's best C); the owner merges them and returns,
//      in one all-to-all of E/P integers a pair, how many of each source's candidates it keeps.
// The error status travels in the allgather like in the count exchange, so a rank's local error
// is raised by every rank before anything else moves.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "comm/communicator.hpp"
#include "runtime/config.hpp"
#include "runtime/dispatch_io.hpp"
#include "runtime/dispatch_plan.hpp"

namespace moe {

class GlobalCapacity {
 public:
  // Collective over `comm` (the layer's expert-parallel group). `plan` holds this rank's ranked
  // assignments (rank_assignments). If any rank passes a local error, every rank throws the same
  // moe::Error. Afterwards caps()[e] is how many of this rank's assignments of expert e are kept.
  void decide(comm::Communicator& comm, const MoeConfig& config, const Routing& routing,
              const DispatchPlan& plan, const std::string& local_error);

  std::span<const std::int64_t> caps() const { return caps_; }
  std::int64_t group_tokens() const { return group_tokens_; }
  std::int64_t capacity() const { return capacity_; }
  // Bytes this rank sent in the decision (for the statistics: the cost of the scheme).
  std::int64_t bytes_sent() const { return bytes_sent_; }

 private:
  struct Candidate {
    float weight;
    std::int32_t choice;
    std::int64_t token;  // global token index g
  };
  void position_caps(const MoeConfig& config, int rank, int size);
  void score_caps(comm::Communicator& comm, const MoeConfig& config, const Routing& routing,
                  const DispatchPlan& plan);

  std::vector<std::int64_t> mine_, all_;  // [E*k+2] per rank: status, T_r, counts (e, j)
  std::vector<std::int64_t> caps_;
  std::vector<Candidate> send_, recv_;
  std::vector<std::size_t> send_bytes_, recv_bytes_;
  std::vector<std::int64_t> merged_, kept_send_, kept_recv_;
  std::int64_t group_tokens_ = 0, capacity_ = 0, first_token_ = 0, bytes_sent_ = 0;
};

}  // namespace moe
