// The one seam through which moe-ep talks to the network. Everything above comm/ sees only this
// interface; MpiCommunicator (comm/mpi_communicator.hpp) implements it over MPI on host memory,
// NcclCommunicator (comm/nccl_communicator.hpp, CUDA builds) over NCCL on device memory.
//
// Every operation other than rank(), size() and host() is collective: all ranks of the
// communicator call it, in the same order, with matching arguments. Operations block until this
// rank's buffers may be read and reused. Failures throw CommError (comm/comm_error.hpp); misuse
// detectable locally (a span of the wrong length) throws std::invalid_argument. To learn the
// receive counts of an alltoallv before the payload moves, see exchange_counts (comm/exchange.hpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

namespace moe::comm {

enum class ReduceOp { sum, max, min };

// What the watchdog (Communicator::set_timeout) does when an operation does not complete in time.
enum class WatchdogAction {
  // Print the diagnostic and end the whole job (MPI_Abort, exit code 124). The default: no rank
  // can be left waiting, and nothing else has to be done right.
  abort_job,
  // Abandon the operation and throw WatchdogTimeout (comm/watchdog.hpp) to the calling thread,
  // for a trainer that wants to save state or report before it ends the job itself.
  throw_error,
};

// What a rank is doing, for the watchdog's diagnostic. Set by the layer before its collectives;
// the strings must outlive the operation (literals, or a label the layer owns).
struct OperationContext {
  const char* layer = "";
  std::int64_t call = 0;
  const char* phase = "";
};

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  // Host name of this rank, for error messages.
  virtual const std::string& host() const = 0;

  // Splits into sub-groups of the ranks that pass the same color, ordered by key (MPI_Comm_split).
  // A rank that passes a "no group" color (MPI_UNDEFINED for MPI) gets nullptr.
  virtual std::unique_ptr<Communicator> split(int color, int key) const = 0;

  // Collective: the lowest rank of this communicator on this rank's host, i.e. among the ranks
  // that share memory with it (MPI: MPI_Comm_split_type with MPI_COMM_TYPE_SHARED). Ranks on one
  // host get the same value; comm/node_topology.hpp builds the node layout from it.
  virtual int host_leader() const = 0;

  // All-to-all with per-peer byte counts. Block p of `send` (send_bytes[p] bytes, blocks packed
  // back to back in peer order) goes to rank p; block q of `recv` comes from rank q. Both spans of
  // counts have size() entries. Correct for any total beyond 2^31 bytes.
  virtual void alltoallv(const std::byte* send, std::span<const std::size_t> send_bytes,
                         std::byte* recv, std::span<const std::size_t> recv_bytes) = 0;

  // Exchanges one fixed-size block of `block_bytes` with every peer (MPI_Alltoall).
  virtual void alltoall(const std::byte* send, std::byte* recv, std::size_t block_bytes) = 0;

  // Gathers `block_bytes` from every rank into recv (size() blocks, rank order) on every rank.
  virtual void allgather(const std::byte* send, std::byte* recv, std::size_t block_bytes) = 0;

  // In-place element-wise reductions over all ranks of this communicator.
  virtual void allreduce(std::span<float> data, ReduceOp op) = 0;
  virtual void allreduce(std::span<double> data, ReduceOp op) = 0;
  virtual void allreduce(std::span<std::int64_t> data, ReduceOp op) = 0;

  virtual void barrier() = 0;

  // How a blocking exchange waits for its peers. `spin` (the default) polls as MPI does: lowest
  // latency. `sleep` polls a non-blocking exchange, pausing with short sleeps, for a
  // communicator driven from a background thread that shares its core with computation (a
  // spinning wait would take that core from the compute it is meant to overlap). Applies to
  // alltoallv; other operations wait as the backend does.
  enum class WaitMode { spin, sleep };
  virtual void set_wait_mode(WaitMode) {}

  // The watchdog: an operation not complete `seconds` after it started is given up, with a
  // diagnostic (rank, host, the operation context, the peers not heard from), so a stopped, hung
  // or diverged rank can never leave the others waiting forever. 0 turns it off. Must be the same
  // on every rank (it selects the exchange algorithm); split() keeps it.
  virtual void set_timeout(double /*seconds*/) {}
  // What happens when the watchdog fires (default abort_job); split() keeps it. May differ
  // between ranks. With throw_error the contract is:
  //  - the calling thread gets WatchdogTimeout (a CommError) carrying the diagnostic;
  //  - no buffer the caller passed to the operation is read or written by the backend after the
  //    exception is thrown, whatever the peers do later (MPI: the watched operations work on
  //    staging memory of the communicator, handed over to MPI for good on expiry; NCCL:
  //    ncclCommAbort, then the stream is drained);
  //  - this communicator is poisoned: every later operation (split too) throws CommError at once.
  //    Other communicators are not marked, but they join the same ranks: expect them to time out
  //    too. An MPI job cannot be finalised normally (MPI_Finalize waits for every rank, and MPI
  //    forbids it with requests pending): save what is local, then end the job with MPI_Abort
  //    (MpiEnvironment::abort).
  // throw_error costs MpiCommunicator one extra copy of every byte a watched operation moves.
  virtual void set_watchdog_action(WatchdogAction /*action*/) {}
  virtual void set_context(const OperationContext& /*context*/) {}
};

}  // namespace moe::comm
