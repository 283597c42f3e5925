// A job with one rank that never arrives: the others must not wait forever. Every rank arms the
// watchdog (2 s); the last rank then sleeps far longer than that instead of joining an exchange,
// a reduction or a barrier (argv[1]). The waiting ranks print the watchdog's diagnostic and abort
// the job. Run by CTest under mpirun (tests/comm/CMakeLists.txt), which checks the diagnostic, the
// non-zero exit and that the job ended long before the late rank would have woken.
#include <mpi.h>

#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "comm/mpi_communicator.hpp"

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  {
    const std::string what = argc > 1 ? argv[1] : "alltoallv";
    auto world = moe::comm::MpiCommunicator::world();
    world->set_timeout(2.0);
    world->set_context({"probe", 7, what.c_str()});
    if (world->rank() == world->size() - 1) {
      std::this_thread::sleep_for(std::chrono::seconds(60));
    }
    const auto n = static_cast<std::size_t>(world->size());
    std::vector<std::size_t> bytes(n, 64);
    std::vector<std::byte> send(64 * n), recv(64 * n);
    std::vector<double> values(4, 1.0);
    if (what == "alltoallv") {
      world->alltoallv(send.data(), bytes, recv.data(), bytes);
    } else if (what == "allreduce") {
      world->allreduce(std::span<double>(values), moe::comm::ReduceOp::sum);
    } else {
      world->barrier();
    }
    std::printf("watchdog_probe: rank %d finished (the watchdog did not fire)\n", world->rank());
  }
  MPI_Finalize();
  return 0;
}
