// Multi-rank tests of MpiCommunicator and exchange_counts (run with 1, 2 and 4 ranks). Every
// payload encodes (source, destination, index), so each receiver checks exactly what arrived
// from whom; expected values are computed locally from (rank, size).
#include <catch2/catch.hpp>
#include <mpi.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

#include "comm/exchange.hpp"
#include "comm/mpi_check.hpp"
#include "comm/mpi_communicator.hpp"
#include "tests/comm/pattern.hpp"
#include "tests/comm/world_ids.hpp"

namespace {

using moe::comm::Communicator;
using moe::comm::CommError;
using moe::comm::MpiCommunicator;
using moe::comm::ReduceOp;
using moe::comm::test::fill_block;
using moe::comm::test::first_mismatch;
using moe::comm::test::mix64;
using moe::comm::test::world_ids;
using moe::comm::test::world_rank;

constexpr auto guard_byte = std::byte{0xAB};
constexpr std::size_t guard_bytes = 64;

int world_size() {
  int size = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  return size;
}

// Uneven per-peer sizes with about one zero block in four, and with `salt` even, a rank 1 that
// sends nothing at all. Values are odd-sized on purpose: nothing is a multiple of 8.
std::size_t uneven_count(int src, int dst, int salt, std::size_t max_bytes) {
  if (src == 1 && salt % 2 == 0) return 0;
  const std::uint64_t h = mix64((static_cast<std::uint64_t>(src) << 40) ^
                                (static_cast<std::uint64_t>(dst) << 20) ^
                                static_cast<std::uint64_t>(salt));
  if (h % 4 == 0) return 0;
  return static_cast<std::size_t>(h % max_bytes) + 1;
}

// Runs one alltoallv with per-peer byte counts count(src_comm_rank, dst_comm_rank) and checks
// every received byte and that nothing was written past the received blocks.
template <class CountFn>
void check_alltoallv(Communicator& comm, CountFn count) {
  const std::vector<int> ids = world_ids(comm);
  const auto n = static_cast<std::size_t>(comm.size());
  const int me = comm.rank();
  std::vector<std::size_t> send_bytes(n);
  std::vector<std::size_t> recv_bytes(n);
  for (std::size_t p = 0; p < n; ++p) {
    send_bytes[p] = count(me, static_cast<int>(p));
    recv_bytes[p] = count(static_cast<int>(p), me);
  }
  const std::size_t send_total = std::accumulate(send_bytes.begin(), send_bytes.end(), std::size_t{0});
  const std::size_t recv_total = std::accumulate(recv_bytes.begin(), recv_bytes.end(), std::size_t{0});
  std::vector<std::byte> send(send_total);
  std::vector<std::byte> recv(recv_total + guard_bytes, guard_byte);
  std::size_t offset = 0;
  for (std::size_t p = 0; p < n; ++p) {
    fill_block(send.data() + offset, ids[static_cast<std::size_t>(me)], ids[p], send_bytes[p]);
    offset += send_bytes[p];
  }

  comm.alltoallv(send.data(), send_bytes, recv.data(), recv_bytes);

  offset = 0;
  for (std::size_t q = 0; q < n; ++q) {
    INFO("block from comm rank " << q << " (" << recv_bytes[q] << " bytes) on comm rank " << me);
    CHECK(first_mismatch(recv.data() + offset, ids[q], ids[static_cast<std::size_t>(me)],
                         recv_bytes[q]) == recv_bytes[q]);
    offset += recv_bytes[q];
  }
  CHECK(std::all_of(recv.begin() + static_cast<std::ptrdiff_t>(recv_total), recv.end(),
                    [](std::byte b) { return b == guard_byte; }));
}

}  // namespace

TEST_CASE("alltoallv delivers uneven and empty blocks to the right peers", "[comm][alltoallv]") {
  auto comm = MpiCommunicator::world();
  // Several calls on one communicator: the scratch arrays are reused between them.
  for (int salt = 0; salt < 6; ++salt) {
    check_alltoallv(*comm, [salt](int src, int dst) { return uneven_count(src, dst, salt, 4099); });
  }
  SECTION("every block empty") {
    check_alltoallv(*comm, [](int, int) { return std::size_t{0}; });
  }
  SECTION("MB-sized blocks") {
    check_alltoallv(*comm, [](int src, int dst) {
      return std::size_t{1} << 20 | static_cast<std::size_t>(src * 977 + dst * 131);
    });
  }
}

TEST_CASE("alltoallv in sleep wait mode delivers the same blocks", "[comm][alltoallv][wait]") {
  // The mode a communication thread uses (non-blocking exchange, polite polling).
  auto comm = MpiCommunicator::world();
  comm->set_wait_mode(Communicator::WaitMode::sleep);
  for (int salt = 0; salt < 4; ++salt) {
    check_alltoallv(*comm, [salt](int src, int dst) { return uneven_count(src, dst, salt, 4099); });
  }
  SECTION("MB-sized blocks") {
    check_alltoallv(*comm, [](int src, int dst) {
      return std::size_t{1} << 20 | static_cast<std::size_t>(src * 977 + dst * 131);
    });
  }
  SECTION("with the point-to-point fallback") {
    auto small = MpiCommunicator::world(64);
    small->set_wait_mode(Communicator::WaitMode::sleep);
    check_alltoallv(*small, [](int src, int dst) { return uneven_count(src, dst, 5, 301); });
  }
}

TEST_CASE("with the watchdog armed, both actions deliver the same results", "[comm][watchdog]") {
  // The watched paths: pairwise exchanges and non-blocking reductions; under throw_error they run
  // on the communicator's staging memory, a window of messages at a time (7-byte messages: blocks
  // of more than 16 * 7 bytes take several windows, whose staging is reused).
  for (const auto action : {moe::comm::WatchdogAction::abort_job, moe::comm::WatchdogAction::throw_error}) {
    INFO("action " << static_cast<int>(action));
    for (const std::size_t max_message : {std::size_t{7}, std::size_t{INT_MAX}}) {
      auto comm = MpiCommunicator::world(max_message);
      comm->set_timeout(60);
      comm->set_watchdog_action(action);
      for (int salt = 0; salt < 3; ++salt) {
        check_alltoallv(*comm, [salt](int src, int dst) { return uneven_count(src, dst, salt, 4099); });
      }
      std::vector<double> values(1000);
      std::iota(values.begin(), values.end(), static_cast<double>(comm->rank()));
      comm->allreduce(std::span<double>(values), ReduceOp::sum);
      const double p = comm->size();
      for (std::size_t i = 0; i < values.size(); ++i) {
        CHECK(values[i] == p * static_cast<double>(i) + p * (p - 1) / 2);
      }
      comm->barrier();
      // split() keeps the watchdog and its action.
      auto half = comm->split_mpi(comm->rank() % 2, comm->rank());
      CHECK(half->timeout() == 60);
      CHECK(half->watchdog_action() == action);
      check_alltoallv(*half, [](int src, int dst) { return uneven_count(src, dst, 1, 999); });
    }
  }
}

TEST_CASE("alltoallv falls back to chunked point-to-point messages", "[comm][alltoallv]") {
  // 7-byte messages: every block of more than 7 bytes is cut, and blocks over 16 * 7 bytes need
  // more than one window of messages in flight.
  auto comm = MpiCommunicator::world(7);
  REQUIRE(comm->max_message_bytes() == 7);
  for (int salt = 0; salt < 6; ++salt) {
    check_alltoallv(*comm, [salt](int src, int dst) { return uneven_count(src, dst, salt, 301); });
  }
  SECTION("blocks that are exact multiples of the message size") {
    check_alltoallv(*comm, [](int src, int dst) {
      return static_cast<std::size_t>(7 * (src + 2 * dst + 1) * 5);
    });
  }
  SECTION("a message size of one byte") {
    auto bytewise = MpiCommunicator::world(1);
    check_alltoallv(*bytewise, [](int src, int dst) { return uneven_count(src, dst, 3, 40); });
  }
}

TEST_CASE("all ranks take the fallback when only one pair needs it", "[comm][alltoallv]") {
  // Only the block from rank 0 to the last rank exceeds the limit; the ranks that neither send nor
  // receive it must still leave MPI_Alltoallv for the point-to-point path with the others.
  auto comm = MpiCommunicator::world(64);
  const int last = comm->size() - 1;
  for (int repeat = 0; repeat < 3; ++repeat) {
    check_alltoallv(*comm, [last, repeat](int src, int dst) {
      if (src == 0 && dst == last) return std::size_t{1000} + static_cast<std::size_t>(repeat);
      return uneven_count(src, dst, repeat, 64);
    });
  }
}

TEST_CASE("alltoallv rejects counts of the wrong length", "[comm][alltoallv]") {
  auto comm = MpiCommunicator::world();
  const auto n = static_cast<std::size_t>(comm->size());
  std::vector<std::size_t> too_short(n - 1);
  std::vector<std::size_t> right(n);
  std::vector<std::byte> buffer(1);
  CHECK_THROWS_AS(comm->alltoallv(buffer.data(), too_short, buffer.data(), right),
                  std::invalid_argument);
  CHECK_THROWS_AS(comm->alltoallv(buffer.data(), right, buffer.data(), too_short),
                  std::invalid_argument);
  std::vector<std::size_t> self_mismatch(n);
  self_mismatch[static_cast<std::size_t>(comm->rank())] = 1;
  CHECK_THROWS_AS(comm->alltoallv(buffer.data(), self_mismatch, buffer.data(), right),
                  std::invalid_argument);
  CHECK_THROWS_AS(MpiCommunicator(MPI_COMM_WORLD, 0), std::invalid_argument);
  CHECK_THROWS_AS(MpiCommunicator(MPI_COMM_WORLD, std::size_t{INT_MAX} + 1), std::invalid_argument);
}

TEST_CASE("counts first, then the payload", "[comm][exchange]") {
  auto comm = MpiCommunicator::world();
  const auto n = static_cast<std::size_t>(comm->size());
  const int me = comm->rank();
  // Only the sender knows what it sends; the receiver learns it from exchange_counts.
  std::vector<std::size_t> send_bytes(n);
  for (std::size_t p = 0; p < n; ++p) send_bytes[p] = uneven_count(me, static_cast<int>(p), 11, 999);
  const std::vector<std::size_t> recv_bytes = moe::comm::exchange_counts(*comm, send_bytes);
  REQUIRE(recv_bytes.size() == n);
  for (std::size_t q = 0; q < n; ++q) CHECK(recv_bytes[q] == uneven_count(static_cast<int>(q), me, 11, 999));

  std::vector<std::byte> send(std::accumulate(send_bytes.begin(), send_bytes.end(), std::size_t{0}));
  std::size_t offset = 0;
  for (std::size_t p = 0; p < n; ++p) {
    fill_block(send.data() + offset, me, static_cast<int>(p), send_bytes[p]);
    offset += send_bytes[p];
  }
  std::vector<std::byte> recv(std::accumulate(recv_bytes.begin(), recv_bytes.end(), std::size_t{0}));
  comm->alltoallv(send.data(), send_bytes, recv.data(), recv_bytes);
  offset = 0;
  for (std::size_t q = 0; q < n; ++q) {
    CHECK(first_mismatch(recv.data() + offset, static_cast<int>(q), me, recv_bytes[q]) == recv_bytes[q]);
    offset += recv_bytes[q];
  }

  std::vector<std::size_t> into(n);
  moe::comm::exchange_counts(*comm, send_bytes, into);
  CHECK(into == recv_bytes);
  std::vector<std::size_t> wrong(n + 1);
  CHECK_THROWS_AS(moe::comm::exchange_counts(*comm, send_bytes, wrong), std::invalid_argument);
}

TEST_CASE("alltoall and allgather move fixed-size blocks", "[comm][alltoall][allgather]") {
  const std::size_t limit = GENERATE(std::size_t{INT_MAX}, std::size_t{7}, std::size_t{13});
  INFO("max_message_bytes " << limit);
  auto comm = MpiCommunicator::world(limit);
  const auto n = static_cast<std::size_t>(comm->size());
  const int me = comm->rank();
  constexpr std::size_t block = 13;

  std::vector<std::byte> send(n * block);
  for (std::size_t p = 0; p < n; ++p) fill_block(send.data() + p * block, me, static_cast<int>(p), block);
  std::vector<std::byte> recv(n * block + guard_bytes, guard_byte);
  comm->alltoall(send.data(), recv.data(), block);
  for (std::size_t q = 0; q < n; ++q) {
    CHECK(first_mismatch(recv.data() + q * block, static_cast<int>(q), me, block) == block);
  }
  CHECK(std::all_of(recv.end() - guard_bytes, recv.end(), [](std::byte b) { return b == guard_byte; }));

  // The gathered block of rank q carries the route (q, -1): the same block went to everyone.
  std::vector<std::byte> mine(block);
  fill_block(mine.data(), me, -1, block);
  std::fill(recv.begin(), recv.end(), guard_byte);
  comm->allgather(mine.data(), recv.data(), block);
  for (std::size_t q = 0; q < n; ++q) {
    CHECK(first_mismatch(recv.data() + q * block, static_cast<int>(q), -1, block) == block);
  }
  CHECK(std::all_of(recv.end() - guard_bytes, recv.end(), [](std::byte b) { return b == guard_byte; }));
}

namespace {

// Values of element i on rank r, chosen so that every sum is exact in the type.
template <class T>
T reduce_input(int rank, std::size_t i) {
  const auto r = static_cast<std::int64_t>(rank);
  const auto k = static_cast<std::int64_t>(i);
  if constexpr (std::is_same_v<T, std::int64_t>) {
    // Beyond 2^53: a reduction routed through double would lose the low bits.
    return (std::int64_t{1} << 55) + r * 3 - k * (r % 2 == 0 ? 1 : -1) * 1000003;
  } else {
    return static_cast<T>((r + 1) * (k + 1) - 3 * r * (k % 3) - 7);
  }
}

template <class T>
void check_allreduce(Communicator& comm, ReduceOp op) {
  constexpr std::size_t length = 37;
  std::vector<T> data(length);
  for (std::size_t i = 0; i < length; ++i) data[i] = reduce_input<T>(comm.rank(), i);
  comm.allreduce(std::span<T>(data), op);
  for (std::size_t i = 0; i < length; ++i) {
    T expected = reduce_input<T>(0, i);
    for (int r = 1; r < comm.size(); ++r) {
      const T v = reduce_input<T>(r, i);
      switch (op) {
        case ReduceOp::sum: expected += v; break;
        case ReduceOp::max: expected = std::max(expected, v); break;
        case ReduceOp::min: expected = std::min(expected, v); break;
      }
    }
    INFO("element " << i);
    CHECK(data[i] == expected);
  }
  // An empty span is a valid no-op on every rank.
  comm.allreduce(std::span<T>(), op);
}

}  // namespace

TEST_CASE("allreduce of every type with every operation", "[comm][allreduce]") {
  auto comm = MpiCommunicator::world();
  const ReduceOp op = GENERATE(ReduceOp::sum, ReduceOp::max, ReduceOp::min);
  INFO("op " << static_cast<int>(op));
  check_allreduce<float>(*comm, op);
  check_allreduce<double>(*comm, op);
  check_allreduce<std::int64_t>(*comm, op);
}

TEST_CASE("split into even and odd ranks", "[comm][split]") {
  auto world = MpiCommunicator::world();
  const int rank = world->rank();
  const int size = world->size();
  auto group = world->split(rank % 2, rank);
  REQUIRE(group != nullptr);
  CHECK(group->size() == (size - rank % 2 + 1) / 2);
  CHECK(group->rank() == rank / 2);
  CHECK(group->host() == world->host());
  CHECK(world_ids(*group) == [&] {
    std::vector<int> ids;
    for (int r = rank % 2; r < size; r += 2) ids.push_back(r);
    return ids;
  }());
  check_alltoallv(*group, [](int src, int dst) { return uneven_count(src, dst, 5, 777); });
}

TEST_CASE("split into blocks of consecutive ranks", "[comm][split]") {
  auto world = MpiCommunicator::world();
  const int rank = world->rank();
  const int size = world->size();
  constexpr int block = 2;
  auto group = world->split(rank / block, rank);
  REQUIRE(group != nullptr);
  CHECK(group->size() == std::min(block, size - rank / block * block));
  CHECK(group->rank() == rank % block);
  std::int64_t sum = rank;
  group->allreduce(std::span<std::int64_t>(&sum, 1), ReduceOp::sum);
  const int first = rank / block * block;
  std::int64_t expected = 0;
  for (int r = first; r < std::min(first + block, size); ++r) expected += r;
  CHECK(sum == expected);
  check_alltoallv(*group, [](int src, int dst) { return uneven_count(src, dst, 8, 777); });
}

TEST_CASE("split orders by key and leaves MPI_UNDEFINED ranks out", "[comm][split]") {
  auto world = MpiCommunicator::world(7);
  const int rank = world->rank();
  const int size = world->size();

  auto reversed = world->split_mpi(0, -rank);
  REQUIRE(reversed != nullptr);
  CHECK(reversed->rank() == size - 1 - rank);
  CHECK(reversed->max_message_bytes() == 7);

  auto without_first = world->split(rank == 0 ? MPI_UNDEFINED : 0, rank);
  if (rank == 0) {
    CHECK(without_first == nullptr);
  } else {
    REQUIRE(without_first != nullptr);
    CHECK(without_first->size() == size - 1);
    CHECK(without_first->rank() == rank - 1);
    without_first->barrier();
  }
}

TEST_CASE("a failed MPI call names the call, the rank and the host", "[comm][error]") {
  auto comm = MpiCommunicator::world();
  const std::string rank_text = "rank " + std::to_string(world_rank());
  int value = 0;
  // Root == size is invalid on every rank; MPI checks it locally and, under MPI_ERRORS_RETURN,
  // returns MPI_ERR_ROOT instead of aborting.
  try {
    MOE_CHECK_MPI(MPI_Bcast(&value, 1, MPI_INT, comm->size(), comm->native()));
    FAIL("MPI_Bcast with an invalid root did not fail");
  } catch (const CommError& error) {
    const std::string message = error.what();
    INFO(message);
    CHECK(message.find("MPI_Bcast(&value, 1, MPI_INT, comm->size(), comm->native())") !=
          std::string::npos);
    char root_text[MPI_MAX_ERROR_STRING] = {};
    int length = 0;
    MPI_Error_string(MPI_ERR_ROOT, root_text, &length);
    CHECK(message.find(std::string(root_text, static_cast<std::size_t>(length))) != std::string::npos);
    CHECK(message.find(rank_text + " on host " + comm->host()) != std::string::npos);
    CHECK(message.find("test_comm.cpp:") != std::string::npos);
    CHECK(error.world_rank() == world_rank());
    CHECK(error.host() == comm->host());
    CHECK_FALSE(comm->host().empty());
  }

  // The same through the class: a negative color (other than MPI_UNDEFINED) is erroneous.
  try {
    (void)comm->split(-5, 0);
    FAIL("split with color -5 did not fail");
  } catch (const CommError& error) {
    const std::string message = error.what();
    INFO(message);
    CHECK(message.find("MPI_Comm_split") != std::string::npos);
    CHECK(message.find(rank_text) != std::string::npos);
    CHECK(message.find("mpi_communicator.cpp:") != std::string::npos);
  }

  // An error returned by MPI leaves the communicator usable.
  comm->barrier();
  std::int64_t one = 1;
  comm->allreduce(std::span<std::int64_t>(&one, 1), ReduceOp::sum);
  CHECK(one == world_size());
}
