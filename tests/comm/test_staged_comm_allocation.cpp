// After warm-up, StagedCommunicator's operations allocate no heap memory (counted over the whole
// process, tests/experts/allocation_counter.hpp): its staging memory has grown to the largest
// operation and is reused. MPI's own allocations are not counted, as for the layers' checks.
#include <catch2/catch.hpp>

#include <cstdint>
#include <span>
#include <vector>

#include "tests/comm/staged_world.hpp"
#include "tests/experts/allocation_counter.hpp"

TEST_CASE("steady-state staged operations allocate nothing", "[comm][staged][allocation]") {
  moe::comm::test::StagedWorld w;
  const auto n = static_cast<std::size_t>(w.comm->size());
  // The shapes of the device layer's control traffic: counts, flags, statistics.
  std::vector<std::int64_t> counts(4 * n), received(4 * n), flags(2);
  std::vector<std::byte> stats(48), gathered(48 * n);
  std::vector<std::size_t> bytes(n, 16);
  std::vector<std::byte> send(16 * n), recv(16 * n);
  std::vector<double> sums(7);
  const auto step = [&] {
    w.comm->alltoall(reinterpret_cast<const std::byte*>(counts.data()),
                     reinterpret_cast<std::byte*>(received.data()), 4 * sizeof(std::int64_t));
    w.comm->allreduce(std::span<std::int64_t>(flags), moe::comm::ReduceOp::max);
    w.comm->allgather(stats.data(), gathered.data(), stats.size());
    w.comm->alltoallv(send.data(), bytes, recv.data(), bytes);
    w.comm->allreduce(std::span<double>(sums), moe::comm::ReduceOp::sum);
    w.comm->barrier();
  };
  step();  // warm-up: staging (and MPI's scratch) grow to these shapes
  step();
  const moe::test::AllocationCounts counts_during = moe::test::allocations_during([&] {
    for (int i = 0; i < 5; ++i) step();
  });
  std::int64_t moe_allocations = counts_during.moe;
  w.world->allreduce(std::span<std::int64_t>(&moe_allocations, 1), moe::comm::ReduceOp::sum);
  CHECK(moe_allocations == 0);
}
