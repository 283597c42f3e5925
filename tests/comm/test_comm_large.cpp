// One real exchange of more than 2^31 bytes at 2 ranks: a block larger than INT_MAX bytes (rank 0
// to rank 1) and a block at an offset beyond INT_MAX (rank 1's block from itself), the two cases
// MPI_Alltoallv's int counts and displacements cannot express. About 2 GiB on each rank.
#include <catch2/catch.hpp>
#include <mpi.h>

#include <chrono>
#include <climits>
#include <cstdio>
#include <cstring>
#include <memory>
#include <vector>

#include "comm/mpi_communicator.hpp"
#include "tests/comm/pattern.hpp"

namespace {

using moe::comm::MpiCommunicator;
using moe::comm::test::fill_block;
using moe::comm::test::first_mismatch;

// Uninitialised storage: value-initialising 2 GiB would cost a pass over memory for nothing.
std::unique_ptr<std::byte[]> raw_bytes(std::size_t bytes) {
  return std::unique_ptr<std::byte[]>(new std::byte[bytes]);
}

}  // namespace

TEST_CASE("alltoallv of more than 2^31 bytes", "[comm][alltoallv][large]") {
  auto comm = MpiCommunicator::world();
  REQUIRE(comm->size() == 2);
  const int me = comm->rank();
  const std::size_t big = std::size_t{INT_MAX} + 12345;  // odd, and no single message can hold it
  // bytes[src][dst]
  const std::size_t bytes[2][2] = {{1001, big}, {777, 3333}};

  std::size_t send_bytes[2] = {bytes[me][0], bytes[me][1]};
  std::size_t recv_bytes[2] = {bytes[0][me], bytes[1][me]};
  const std::size_t send_total = send_bytes[0] + send_bytes[1];
  const std::size_t recv_total = recv_bytes[0] + recv_bytes[1];
  auto send = raw_bytes(send_total);
  auto recv = raw_bytes(recv_total);
  fill_block(send.get(), me, 0, send_bytes[0]);
  fill_block(send.get() + send_bytes[0], me, 1, send_bytes[1]);
  // Fault the receive pages in before timing: first touch inside MPI's receive copy was measured
  // 6x slower here than a memset, and a real caller reuses its receive workspace anyway.
  std::memset(recv.get(), 0, recv_total);

  comm->barrier();
  const auto start = std::chrono::steady_clock::now();
  comm->alltoallv(send.get(), send_bytes, recv.get(), recv_bytes);
  const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
  if (me == 0) {
    std::printf("alltoallv of %zu bytes from rank 0 to rank 1: %.3f s (%.2f GB/s)\n", big,
                elapsed.count(), static_cast<double>(big) / elapsed.count() * 1e-9);
  }

  CHECK(first_mismatch(recv.get(), 0, me, recv_bytes[0]) == recv_bytes[0]);
  CHECK(first_mismatch(recv.get() + recv_bytes[0], 1, me, recv_bytes[1]) == recv_bytes[1]);
}
