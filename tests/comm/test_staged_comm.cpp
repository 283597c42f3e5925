// StagedCommunicator (comm/staged_communicator.hpp) over real MPI, run with 1, 2 and 4 ranks: each
// operation staged through HostStagingMemory into HostAsDeviceCommunicator, which refuses any
// buffer that is not staging memory. Payloads encode (source, destination, index) (pattern.hpp),
// so every receiver checks exactly what arrived from whom; guard bytes catch writes past the end.
#include <catch2/catch.hpp>
#include <mpi.h>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <stdexcept>
#include <vector>

#include "tests/comm/pattern.hpp"
#include "tests/comm/staged_world.hpp"
#include "tests/comm/world_ids.hpp"

namespace {

using moe::comm::Communicator;
using moe::comm::ReduceOp;
using moe::comm::test::fill_block;
using moe::comm::test::first_mismatch;
using moe::comm::test::mix64;
using moe::comm::test::world_ids;
using moe::comm::test::world_rank;
using moe::comm::test::StagedWorld;

constexpr auto guard_byte = std::byte{0xAB};
constexpr std::size_t guard_bytes = 32;

// Uneven per-peer sizes, about one block in four empty; with `salt` even, rank 1 sends nothing.
std::size_t uneven_count(int src, int dst, int salt) {
  if (src == 1 && salt % 2 == 0) return 0;
  const std::uint64_t h = mix64((static_cast<std::uint64_t>(src) << 40) ^
                                (static_cast<std::uint64_t>(dst) << 20) ^ static_cast<std::uint64_t>(salt));
  return h % 4 == 0 ? 0 : static_cast<std::size_t>(h % 301) + 1;
}

// One alltoallv with counts count(src, dst) (comm ranks); checks every byte and the guard.
template <class CountFn>
void check_alltoallv(Communicator& comm, CountFn count) {
  const std::vector<int> ids = world_ids(comm);
  const auto n = static_cast<std::size_t>(comm.size());
  const int me = comm.rank();
  std::vector<std::size_t> send_bytes(n), recv_bytes(n);
  for (std::size_t p = 0; p < n; ++p) {
    send_bytes[p] = count(me, static_cast<int>(p));
    recv_bytes[p] = count(static_cast<int>(p), me);
  }
  std::vector<std::byte> send(std::accumulate(send_bytes.begin(), send_bytes.end(), std::size_t{0}));
  const std::size_t recv_total = std::accumulate(recv_bytes.begin(), recv_bytes.end(), std::size_t{0});
  std::vector<std::byte> recv(recv_total + guard_bytes, guard_byte);
  std::size_t offset = 0;
  for (std::size_t p = 0; p < n; ++p) {
    fill_block(send.data() + offset, ids[static_cast<std::size_t>(me)], ids[p], send_bytes[p]);
    offset += send_bytes[p];
  }
  comm.alltoallv(send.data(), send_bytes, recv.data(), recv_bytes);
  offset = 0;
  for (std::size_t p = 0; p < n; ++p) {
    INFO("block from rank " << p << " of " << recv_bytes[p] << " bytes");
    CHECK(first_mismatch(recv.data() + offset, ids[p], ids[static_cast<std::size_t>(me)], recv_bytes[p]) ==
          recv_bytes[p]);
    offset += recv_bytes[p];
  }
  CHECK(std::all_of(recv.begin() + static_cast<std::ptrdiff_t>(recv_total), recv.end(),
                    [](std::byte b) { return b == guard_byte; }));
}

void check_alltoall(Communicator& comm, std::size_t block) {
  const std::vector<int> ids = world_ids(comm);
  const auto n = static_cast<std::size_t>(comm.size());
  const int me = ids[static_cast<std::size_t>(comm.rank())];
  std::vector<std::byte> send(n * block), recv(n * block + guard_bytes, guard_byte);
  for (std::size_t p = 0; p < n; ++p) fill_block(send.data() + p * block, me, ids[p], block);
  comm.alltoall(send.data(), recv.data(), block);
  for (std::size_t p = 0; p < n; ++p) {
    INFO("block from rank " << p);
    CHECK(first_mismatch(recv.data() + p * block, ids[p], me, block) == block);
  }
  CHECK(std::all_of(recv.begin() + static_cast<std::ptrdiff_t>(n * block), recv.end(),
                    [](std::byte b) { return b == guard_byte; }));
}

void check_allgather(Communicator& comm, std::size_t block) {
  const std::vector<int> ids = world_ids(comm);
  const auto n = static_cast<std::size_t>(comm.size());
  const int me = ids[static_cast<std::size_t>(comm.rank())];
  // The destination in the pattern is -1: every rank receives the same block.
  std::vector<std::byte> send(block), recv(n * block + guard_bytes, guard_byte);
  fill_block(send.data(), me, -1, block);
  comm.allgather(send.data(), recv.data(), block);
  for (std::size_t p = 0; p < n; ++p) {
    INFO("block of rank " << p);
    CHECK(first_mismatch(recv.data() + p * block, ids[p], -1, block) == block);
  }
  CHECK(std::all_of(recv.begin() + static_cast<std::ptrdiff_t>(n * block), recv.end(),
                    [](std::byte b) { return b == guard_byte; }));
}

// Element i on rank r, exact in every type (small integers, or beyond 2^32 for int64).
template <class T>
T value_of(int r, std::size_t i) {
  const auto signed_i = static_cast<std::int64_t>(i);
  const std::int64_t v = (r + 1) * (signed_i % 7 - 3) + (signed_i % 2 == 0 ? r : -r);
  if constexpr (std::is_same_v<T, std::int64_t>) return v * (std::int64_t{1} << 33) + signed_i;
  return static_cast<T>(v);
}

template <class T>
void check_allreduce(Communicator& comm, std::size_t count) {
  for (ReduceOp op : {ReduceOp::sum, ReduceOp::max, ReduceOp::min}) {
    std::vector<T> data(count);
    for (std::size_t i = 0; i < count; ++i) data[i] = value_of<T>(comm.rank(), i);
    comm.allreduce(std::span<T>(data), op);
    std::size_t wrong = 0;
    for (std::size_t i = 0; i < count; ++i) {
      T expected = value_of<T>(0, i);
      for (int r = 1; r < comm.size(); ++r) {
        const T v = value_of<T>(r, i);
        expected = op == ReduceOp::sum ? expected + v : op == ReduceOp::max ? std::max(expected, v) : std::min(expected, v);
      }
      if (data[i] != expected) ++wrong;
    }
    INFO("op " << static_cast<int>(op) << ", " << count << " elements of " << sizeof(T) << " bytes");
    CHECK(wrong == 0);
  }
}

void check_all_operations(Communicator& comm) {
  for (std::size_t block : {std::size_t{1}, std::size_t{13}, std::size_t{256}}) check_alltoall(comm, block);
  for (int salt = 0; salt < 4; ++salt) {
    check_alltoallv(comm, [&](int src, int dst) { return uneven_count(src, dst, salt); });
  }
  check_alltoallv(comm, [](int, int) { return std::size_t{0}; });
  for (std::size_t block : {std::size_t{0}, std::size_t{4}, std::size_t{77}}) check_allgather(comm, block);
  for (std::size_t count : {std::size_t{1}, std::size_t{5}, std::size_t{1000}}) {
    check_allreduce<float>(comm, count);
    check_allreduce<double>(comm, count);
    check_allreduce<std::int64_t>(comm, count);
  }
  comm.barrier();
}

}  // namespace

TEST_CASE("staged alltoall, alltoallv, allgather, allreduce and barrier over MPI", "[comm][staged]") {
  StagedWorld w;
  CHECK(w.comm->rank() == w.world->rank());
  CHECK(w.comm->size() == w.world->size());
  CHECK(w.comm->host() == w.world->host());
  CHECK(w.comm->host_leader() == w.world->host_leader());
  check_all_operations(*w.comm);
}

TEST_CASE("a staged communicator splits into staged groups", "[comm][staged][split]") {
  StagedWorld w;
  const int rank = w.comm->rank();
  const int size = w.comm->size();
  SECTION("even and odd ranks, in reverse order") {
    auto group = w.comm->split(rank % 2, -rank);
    REQUIRE(group != nullptr);
    const int members = (size - rank % 2 + 1) / 2;
    CHECK(group->size() == members);
    CHECK(group->rank() == members - 1 - rank / 2);
    check_all_operations(*group);
  }
  SECTION("a rank that passes MPI_UNDEFINED is left out") {
    auto group = w.comm->split(rank == 0 ? MPI_UNDEFINED : 0, rank);
    CHECK((group == nullptr) == (rank == 0));
    if (group != nullptr) {
      CHECK(group->size() == size - 1);
      CHECK(group->rank() == rank - 1);
      check_all_operations(*group);
    }
  }
  // The parent still works after its groups have come and gone.
  check_alltoall(*w.comm, 8);
}

TEST_CASE("only staging memory reaches the device communicator", "[comm][staged][errors]") {
  StagedWorld w;
  // The stand-in refuses host memory (a local check, before any collective): without it the
  // tests above could not tell staged buffers from the caller's.
  std::vector<double> host(4, 1.0);
  CHECK_THROWS_AS(w.device.allreduce(std::span<double>(host), ReduceOp::sum), std::logic_error);
  // Counts of the wrong length are refused before anything is copied or sent.
  const std::vector<std::size_t> counts(static_cast<std::size_t>(w.comm->size()) + 1, 0);
  std::byte none{};
  CHECK_THROWS_AS(w.comm->alltoallv(&none, counts, &none, counts), std::invalid_argument);
  CHECK(w.staging->allocations() == 0);
}

TEST_CASE("staging grows to the largest operation, then allocates no more", "[comm][staged]") {
  StagedWorld w;
  check_all_operations(*w.comm);
  const int warm = w.staging->allocations();
  CHECK(warm >= 1);
  for (int i = 0; i < 2; ++i) check_all_operations(*w.comm);
  CHECK(w.staging->allocations() == warm);
  // One larger operation grows it once more.
  check_allreduce<double>(*w.comm, 100000);
  CHECK(w.staging->allocations() == warm + 1);
  check_all_operations(*w.comm);
  CHECK(w.staging->allocations() == warm + 1);
}
