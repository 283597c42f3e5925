// A Communicator decorator that makes the network slower on purpose: each operation completes no
// earlier than `latency + bytes / bandwidth` after this rank entered it, so overlap of exchanges
// with compute, and scaling across slow links, can be studied on one machine.
//
// The model: every rank has one full-duplex link of `bandwidth` to a non-blocking switch, and an
// operation costs one `latency` plus the time its busier direction needs on this rank's link:
//   alltoallv   max(bytes sent to other ranks, bytes received from other ranks); the rank's own
//               block is a local copy and never crosses the link
//   alltoall    (P-1) * block_bytes
//   allgather   (P-1) * block_bytes (each rank receives P-1 blocks and its block reaches P-1 peers)
//   allreduce   2 * (P-1) / P * n * sizeof(element), the traffic per rank of a ring all-reduce
//   barrier     0 bytes: latency only
//   split       0 bytes: latency only (its colors and keys are a few bytes)
// A communicator of one rank crosses no link: its operations add no delay at all.
//
// Two classes of link (the constructor with a node per rank): peers on this rank's node are
// reached over `inside`, the others over `between`, each with its own latency and bandwidth, as on
// a cluster (NVLink or shared memory inside a node, the network between nodes). An operation then
// costs the longer of its two classes' times, each computed as above over the bytes that cross
// that class (a class this communicator has no peer in costs nothing); an all-reduce spanning
// nodes is costed on `between` whole.
//
// The wrapped operation runs first, then this thread sleeps (std::this_thread::sleep_until on the
// steady clock, no spinning) until the modeled completion time, so completion is
// max(real completion, entry + model) and a compute thread sharing the core keeps running while
// the exchange "travels". What is not modeled: a peer's link (a rank that receives from a busy
// sender is not slowed by it), and late peers (when ranks enter at different times, the real
// operation's wait for the latest one counts toward the modeled time; the runtime's ranks enter
// together). Sleeping overshoots by the kernel's timer slack (tens of µs on Linux), so the model
// is meant for transfers of a few hundred µs and more.
//
// Thread safety: a decorator keeps no mutable state of its own, so it is exactly as safe as the
// communicator it wraps; two decorated communicators over two different MpiCommunicators may be
// used from two threads at once (MPI_THREAD_MULTIPLE).
#pragma once

#include <chrono>
#include <cstddef>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "comm/communicator.hpp"

namespace moe::comm {

// Parameters of the simulated link of every rank.
struct LinkModel {
  double latency_us = 0;        // added once per operation, >= 0
  double bandwidth_gbps = 0;    // 10^9 bytes per second per direction; 0 means unlimited

  // Throws std::invalid_argument naming the field when a value is negative or not finite.
  void validate() const;

  // latency + bytes / bandwidth, rounded up to whole nanoseconds (so that a sleep until the
  // resulting deadline is never shorter than the model).
  std::chrono::nanoseconds transfer_time(std::size_t bytes) const;
};

// Bytes one operation moves over this rank's link under the model above (0 for one rank).
// `rank` is this rank's index; both spans have one entry per rank.
std::size_t alltoallv_link_bytes(int rank, std::span<const std::size_t> send_bytes,
                                 std::span<const std::size_t> recv_bytes);
std::size_t alltoall_link_bytes(int num_ranks, std::size_t block_bytes);
std::size_t allgather_link_bytes(int num_ranks, std::size_t block_bytes);
std::size_t allreduce_link_bytes(int num_ranks, std::size_t data_bytes);

class SimulatedLinkCommunicator final : public Communicator {
 public:
  // Wraps and owns `inner` (what split() of a decorator returns). Throws std::invalid_argument for
  // a null `inner` or an invalid model.
  SimulatedLinkCommunicator(std::unique_ptr<Communicator> inner, const LinkModel& model);

  // Wraps `inner` without owning it: it must outlive this object (for the world communicator a
  // program already holds).
  SimulatedLinkCommunicator(Communicator& inner, const LinkModel& model);

  // Two classes: node_of_rank[r] is the node of rank r of `inner` (size() entries).
  SimulatedLinkCommunicator(Communicator& inner, const LinkModel& inside, const LinkModel& between,
                            std::vector<int> node_of_rank);
  SimulatedLinkCommunicator(std::unique_ptr<Communicator> inner, const LinkModel& inside,
                            const LinkModel& between, std::vector<int> node_of_rank);

  const LinkModel& model() const noexcept { return model_; }
  const LinkModel& between_nodes() const noexcept { return between_; }
  Communicator& inner() const noexcept { return inner_; }

  int rank() const override { return inner_.rank(); }
  int size() const override { return inner_.size(); }
  const std::string& host() const override { return inner_.host(); }

  // The wrapped communicator's split, decorated with the same model (nullptr stays nullptr).
  std::unique_ptr<Communicator> split(int color, int key) const override;
  int host_leader() const override { return inner_.host_leader(); }

  void alltoallv(const std::byte* send, std::span<const std::size_t> send_bytes, std::byte* recv,
                 std::span<const std::size_t> recv_bytes) override;
  void alltoall(const std::byte* send, std::byte* recv, std::size_t block_bytes) override;
  void allgather(const std::byte* send, std::byte* recv, std::size_t block_bytes) override;
  void allreduce(std::span<float> data, ReduceOp op) override;
  void allreduce(std::span<double> data, ReduceOp op) override;
  void allreduce(std::span<std::int64_t> data, ReduceOp op) override;
  void barrier() override;
  void set_wait_mode(WaitMode mode) override { inner_.set_wait_mode(mode); }
  void set_timeout(double seconds) override { inner_.set_timeout(seconds); }
  void set_watchdog_action(WatchdogAction action) override { inner_.set_watchdog_action(action); }
  void set_context(const OperationContext& context) override { inner_.set_context(context); }

 private:
  // Sleeps until `start` + the model's time for the bytes crossing each class; no delay on a
  // one-rank communicator.
  void complete_no_earlier(std::chrono::steady_clock::time_point start, std::size_t inside_bytes,
                           std::size_t between_bytes = 0) const;
  void reduce_no_earlier(std::chrono::steady_clock::time_point start, std::size_t data_bytes) const;
  void count_peers();
  bool same_node(std::size_t peer) const;

  std::unique_ptr<Communicator> owned_;  // null when wrapping by reference
  Communicator& inner_;
  LinkModel model_;    // inside a node (every peer with one class)
  LinkModel between_;  // between nodes
  std::vector<int> node_of_rank_;  // empty: one class
  std::size_t inside_peers_ = 0, between_peers_ = 0;
};

}  // namespace moe::comm
