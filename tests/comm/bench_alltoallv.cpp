// Times MpiCommunicator::alltoallv against a plain MPI_Alltoallv of the same bytes in the same run.
//   mpirun -np 2 comm_alltoallv_bench [bytes_per_rank (default 8 MiB)] [repetitions (default 20)]
// Each rank sends bytes_per_rank in total, split evenly over all ranks (itself included). Prints
// the median and minimum time per call over the repetitions after 3 warm-up calls, the algorithm
// bandwidth (bytes sent per rank / time) and the bus bandwidth (x (n-1)/n, as nccl-tests define it
// for all-to-all). Exits non-zero when any received byte is wrong.
#include <mpi.h>

#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "comm/mpi_communicator.hpp"
#include "comm/mpi_environment.hpp"
#include "tests/comm/pattern.hpp"

namespace {

using moe::comm::MpiCommunicator;

struct Timing {
  double median_s;
  double min_s;
};

// Times every call of `calls` `repetitions` times, round-robin (call 0, call 1, ..., call 0, ...)
// so that a change of machine load mid-run hits all of them alike. A repetition lasts as long as
// its slowest rank. Three warm-up rounds first. `check` runs after every call, untimed.
template <class Call, class Check>
std::vector<Timing> time_round_robin(MPI_Comm comm, int repetitions, std::vector<Call>& calls,
                                     Check check) {
  std::vector<std::vector<double>> times(calls.size());
  for (int i = 0; i < 3 + repetitions; ++i) {
    for (std::size_t c = 0; c < calls.size(); ++c) {
      MPI_Barrier(comm);
      const double start = MPI_Wtime();
      calls[c]();
      double elapsed = MPI_Wtime() - start;
      MPI_Allreduce(MPI_IN_PLACE, &elapsed, 1, MPI_DOUBLE, MPI_MAX, comm);
      if (i >= 3) times[c].push_back(elapsed);
      check();
    }
  }
  std::vector<Timing> result;
  for (auto& t : times) {
    std::sort(t.begin(), t.end());
    result.push_back({t[t.size() / 2], t.front()});
  }
  return result;
}

}  // namespace

int main(int argc, char** argv) {
  moe::comm::MpiEnvironment environment(argc, argv);
  const std::size_t bytes_per_rank = argc > 1 ? std::stoull(argv[1]) : std::size_t{8} << 20;
  const int repetitions = argc > 2 ? std::stoi(argv[2]) : 20;

  auto comm = MpiCommunicator::world();
  const int me = comm->rank();
  const auto n = static_cast<std::size_t>(comm->size());
  const std::size_t block = bytes_per_rank / n;
  if (block == 0 || block > std::size_t{INT_MAX}) {
    // The plain MPI_Alltoallv it is compared with takes int counts.
    if (me == 0) std::fprintf(stderr, "bytes_per_rank / ranks must be in 1..INT_MAX\n");
    return EXIT_FAILURE;
  }
  std::vector<std::size_t> counts(n, block);
  std::vector<int> int_counts(n, static_cast<int>(block));
  std::vector<int> int_displs(n);
  for (std::size_t p = 0; p < n; ++p) int_displs[p] = static_cast<int>(p * block);
  std::vector<std::byte> send(block * n);
  std::vector<std::byte> recv(block * n);
  for (std::size_t p = 0; p < n; ++p) {
    moe::comm::test::fill_block(send.data() + p * block, me, static_cast<int>(p), block);
  }

  int wrong = 0;
  auto verify = [&] {
    for (std::size_t q = 0; q < n; ++q) {
      if (moe::comm::test::first_mismatch(recv.data() + q * block, static_cast<int>(q), me,
                                          block) != block) {
        ++wrong;
      }
    }
    std::fill(recv.begin(), recv.end(), std::byte{0});
  };

  MPI_Comm plain = comm->native();
  // The chunked point-to-point path at full message size, forced by making the limit one byte
  // smaller than a block.
  auto chunked_comm = MpiCommunicator::world(std::max<std::size_t>(block - 1, 1));
  // The watchdog's paths (a timeout no call reaches): pairwise point to point, and under
  // throw_error staged through the communicator's own memory.
  auto watched = MpiCommunicator::world();
  watched->set_timeout(300);
  auto watched_throwing = MpiCommunicator::world();
  watched_throwing->set_timeout(300);
  watched_throwing->set_watchdog_action(moe::comm::WatchdogAction::throw_error);
  std::vector<std::function<void()>> calls = {
      [&] {
        MPI_Alltoallv(send.data(), int_counts.data(), int_displs.data(), MPI_BYTE, recv.data(),
                      int_counts.data(), int_displs.data(), MPI_BYTE, plain);
      },
      [&] {
        comm->alltoallv(send.data(), counts, recv.data(), counts);
      },
      [&] {
        chunked_comm->alltoallv(send.data(), counts, recv.data(), counts);
      },
      [&] {
        watched->alltoallv(send.data(), counts, recv.data(), counts);
      },
      [&] {
        watched_throwing->alltoallv(send.data(), counts, recv.data(), counts);
      },
  };
  const std::vector<Timing> timings = time_round_robin(plain, repetitions, calls, verify);

  MPI_Allreduce(MPI_IN_PLACE, &wrong, 1, MPI_INT, MPI_SUM, plain);
  if (me == 0) {
    const double bus_factor = static_cast<double>(n - 1) / static_cast<double>(n);
    std::printf("# %zu ranks, %d repetitions\n", n, repetitions);
    std::printf("%-28s %12s %10s %10s %10s %10s\n", "# call", "bytes/rank", "median_us",
                "min_us", "algbw_GB/s", "busbw_GB/s");
    auto row = [&](const char* name, Timing t) {
      const double algbw = static_cast<double>(block * n) / t.median_s * 1e-9;
      std::printf("%-28s %12zu %10.1f %10.1f %10.2f %10.2f\n", name, block * n, t.median_s * 1e6,
                  t.min_s * 1e6, algbw, algbw * bus_factor);
    };
    row("MPI_Alltoallv", timings[0]);
    row("MpiCommunicator::alltoallv", timings[1]);
    row("pairwise fallback", timings[2]);
    row("watchdog, abort_job", timings[3]);
    row("watchdog, throw_error", timings[4]);
    std::printf("# wrong blocks: %d\n", wrong);
  }
  return wrong == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
