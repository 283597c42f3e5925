// A job with one rank that never arrives in time: the others must not wait forever. Every rank
// arms the watchdog (2 s); the last rank then sleeps instead of joining an exchange, a reduction
// or a barrier (argv[1]). Run by CTest under mpirun (tests/comm/CMakeLists.txt).
//
// watchdog_probe OPERATION          the default action: the waiting ranks print the diagnostic and
//                                   abort the job; CTest checks the diagnostic, the non-zero exit
//                                   and that the job ended long before the late rank would wake.
// watchdog_probe OPERATION throw    WatchdogAction::throw_error: each waiting rank must catch
//                                   WatchdogTimeout within the bound, with the diagnostic. The
//                                   late rank wakes after 5 s and joins the operation after all,
//                                   so that its data does arrive; the waiting ranks then check
//                                   that none of it reached their buffers (the contract of
//                                   set_watchdog_action), that the communicator refuses the next
//                                   call at once, and print one line each. All ranks then meet on
//                                   a communicator of their own and rank 0 ends the job with
//                                   MPI_Abort (exit 3), as the contract says a trainer must.
#include <mpi.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "comm/mpi_communicator.hpp"
#include "comm/watchdog.hpp"

namespace {

using Clock = std::chrono::steady_clock;
constexpr double timeout_seconds = 2.0;
constexpr auto late_rank_sleep = std::chrono::seconds(5);
constexpr int sentinel = 0xAB;
constexpr std::size_t block = 64;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Completes `request` by polling, or gives up after `seconds` (so the probe itself never hangs).
bool wait_bounded(MPI_Request& request, double seconds) {
  const auto start = Clock::now();
  while (seconds_since(start) < seconds) {
    int done = 0;
    MPI_Test(&request, &done, MPI_STATUS_IGNORE);
    if (done != 0) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return false;
}

struct Buffers {
  explicit Buffers(std::size_t n)
      : bytes(n, block), send(block * n), recv(block * n, std::byte{sentinel}), values(4, 1.0) {}
  std::vector<std::size_t> bytes;
  std::vector<std::byte> send, recv;
  std::vector<double> values;
};

void run(moe::comm::Communicator& comm, const std::string& what, Buffers& b) {
  if (what == "alltoallv") {
    comm.alltoallv(b.send.data(), b.bytes, b.recv.data(), b.bytes);
  } else if (what == "allreduce") {
    comm.allreduce(std::span<double>(b.values), moe::comm::ReduceOp::sum);
  } else {
    comm.barrier();
  }
}

// What a waiting rank checks after its WatchdogTimeout; "" when all holds.
std::string check_caught(const moe::comm::WatchdogTimeout& error, const std::string& what,
                         const Buffers& b, int late) {
  const std::string text = error.what();
  const std::string context = "layer 'probe' call 7 phase '" + what + "'";
  if (text.find(context) == std::string::npos) return "diagnostic without \"" + context + "\"";
  if (text.find("unusable from now on") == std::string::npos) return "diagnostic without its consequence";
  if (what == "alltoallv") {
    const std::string peer = "no data yet from rank " + std::to_string(late);
    if (text.find(peer) == std::string::npos) return "diagnostic without \"" + peer + "\"";
    if (error.report().silent_ranks.empty() || error.report().silent_ranks[0] != late) {
      return "report().silent_ranks does not start with the late rank";
    }
    for (std::size_t i = 0; i < block; ++i) {
      if (b.recv[static_cast<std::size_t>(late) * block + i] != std::byte{sentinel}) {
        return "the late rank's block of the receive buffer was written after the exception";
      }
    }
  }
  if (what == "allreduce") {
    for (const double v : b.values) {
      if (v != 1.0) return "the reduced values were written after the exception: " + std::to_string(v);
    }
  }
  return "";
}

int run_throwing(moe::comm::MpiCommunicator& world, const std::string& what) {
  // Made before anyone is late: how the ranks meet at the end.
  MPI_Comm side = MPI_COMM_NULL;
  MPI_Comm_dup(MPI_COMM_WORLD, &side);
  const int late = world.size() - 1;
  const bool is_late = world.rank() == late;
  Buffers b(static_cast<std::size_t>(world.size()));
  for (std::size_t i = 0; i < b.send.size(); ++i) b.send[i] = std::byte(world.rank() + 1);
  if (is_late) std::this_thread::sleep_for(late_rank_sleep);
  const auto start = Clock::now();
  std::string verdict;
  try {
    run(world, what, b);
    verdict = "completed";
  } catch (const moe::comm::WatchdogTimeout& error) {
    const double caught_after = seconds_since(start);
    if (is_late) {
      verdict = "timed out too";
    } else {
      // Wait for the late rank's data to have been sent, then look at the buffers.
      int token = 0;
      MPI_Request request = MPI_REQUEST_NULL;
      MPI_Irecv(&token, 1, MPI_INT, late, 1, side, &request);
      if (!wait_bounded(request, 20)) {
        std::printf("watchdog_probe: rank %d FAILED: the late rank never reported\n", world.rank());
        MPI_Abort(MPI_COMM_WORLD, 2);
      }
      std::string problem = check_caught(error, what, b, late);
      const auto refused_at = Clock::now();
      double refused_after = -1;
      try {
        world.barrier();
        problem += "a later barrier was not refused";
      } catch (const moe::comm::WatchdogTimeout&) {
        problem += "a later barrier timed out instead of being refused";
      } catch (const moe::comm::CommError& refused) {
        refused_after = seconds_since(refused_at);
        if (std::string(refused.what()).find("unusable after a watchdog timeout") == std::string::npos) {
          problem += "refusal without its reason: " + std::string(refused.what());
        }
      }
      if (!problem.empty()) {
        std::printf("watchdog_probe: rank %d FAILED: %s\n", world.rank(), problem.c_str());
      } else {
        std::printf("watchdog_probe: rank %d caught WatchdogTimeout after %.2f s (bound %.1f s), "
                    "its buffers untouched by the late data, the next call refused in %.6f s: %s\n",
                    world.rank(), caught_after, timeout_seconds, refused_after, error.what());
      }
      std::fflush(stdout);
    }
  }
  if (is_late) {
    std::printf("watchdog_probe: late rank %d joined after %.0f s: %s\n", world.rank(),
                std::chrono::duration<double>(late_rank_sleep).count(), verdict.c_str());
    std::fflush(stdout);
    for (int r = 0; r < late; ++r) {
      int token = 1;
      MPI_Send(&token, 1, MPI_INT, r, 1, side);
    }
  } else if (verdict == "completed") {
    std::printf("watchdog_probe: rank %d FAILED: the operation completed\n", world.rank());
  }
  // Everybody has reported: end the job the way the contract asks (no MPI_Finalize).
  MPI_Request request = MPI_REQUEST_NULL;
  MPI_Ibarrier(side, &request);
  wait_bounded(request, 20);
  if (world.rank() == 0) MPI_Abort(MPI_COMM_WORLD, 3);
  std::this_thread::sleep_for(std::chrono::seconds(30));  // the abort ends this process
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  {
    const std::string what = argc > 1 ? argv[1] : "alltoallv";
    const bool throwing = argc > 2 && std::string(argv[2]) == "throw";
    auto world = moe::comm::MpiCommunicator::world();
    world->set_timeout(timeout_seconds);
    world->set_context({"probe", 7, what.c_str()});
    if (throwing) {
      world->set_watchdog_action(moe::comm::WatchdogAction::throw_error);
      return run_throwing(*world, what);
    }
    if (world->rank() == world->size() - 1) {
      std::this_thread::sleep_for(std::chrono::seconds(60));
    }
    Buffers b(static_cast<std::size_t>(world->size()));
    run(*world, what, b);
    std::printf("watchdog_probe: rank %d finished (the watchdog did not fire)\n", world->rank());
  }
  MPI_Finalize();
  return 0;
}
