// Multi-rank tests of SimulatedLinkCommunicator (run with 1, 2 and 4 ranks): it returns exactly
// what the wrapped communicator returns, no operation completes before its modeled time (lower
// bounds only: a loaded machine may always be slower), and the wait costs no CPU.
#include <catch2/catch.hpp>
#include <mpi.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "comm/mpi_communicator.hpp"
#include "comm/simulated_link.hpp"
#include "tests/comm/pattern.hpp"
#include "tests/comm/world_ids.hpp"

namespace {

using moe::comm::Communicator;
using moe::comm::LinkModel;
using moe::comm::MpiCommunicator;
using moe::comm::ReduceOp;
using moe::comm::SimulatedLinkCommunicator;
using moe::comm::test::fill_block;
using moe::comm::test::first_mismatch;
using moe::comm::test::mix64;
using moe::comm::test::world_ids;
using Clock = std::chrono::steady_clock;

// Per-peer byte counts of one alltoallv: sends[p] goes to p, recvs[q] comes from q.
struct Counts {
  std::vector<std::size_t> sends, recvs;
};

template <class CountFn>
Counts make_counts(const Communicator& comm, CountFn count) {
  const auto n = static_cast<std::size_t>(comm.size());
  Counts c{std::vector<std::size_t>(n), std::vector<std::size_t>(n)};
  for (std::size_t p = 0; p < n; ++p) {
    c.sends[p] = count(comm.rank(), static_cast<int>(p));
    c.recvs[p] = count(static_cast<int>(p), comm.rank());
  }
  return c;
}

std::size_t total(const std::vector<std::size_t>& v) {
  return std::accumulate(v.begin(), v.end(), std::size_t{0});
}

// Runs one alltoallv of pattern payloads on `comm` and returns the received bytes. `ids` names
// each rank of `comm` in the patterns (world ranks, so blocks leaking across groups would show).
std::vector<std::byte> run_alltoallv(Communicator& comm, const Counts& c, const std::vector<int>& ids) {
  std::vector<std::byte> send(total(c.sends));
  std::size_t offset = 0;
  for (std::size_t p = 0; p < c.sends.size(); ++p) {
    fill_block(send.data() + offset, ids[static_cast<std::size_t>(comm.rank())], ids[p], c.sends[p]);
    offset += c.sends[p];
  }
  std::vector<std::byte> recv(total(c.recvs), std::byte{0xAB});
  comm.alltoallv(send.data(), c.sends, recv.data(), c.recvs);
  return recv;
}

// True when every received block carries the pattern of its source.
bool pattern_ok(const Communicator& comm, const Counts& c, const std::vector<int>& ids,
                const std::vector<std::byte>& recv) {
  std::size_t offset = 0;
  for (std::size_t q = 0; q < c.recvs.size(); ++q) {
    if (first_mismatch(recv.data() + offset, ids[q], ids[static_cast<std::size_t>(comm.rank())],
                       c.recvs[q]) != c.recvs[q]) {
      return false;
    }
    offset += c.recvs[q];
  }
  return true;
}

std::size_t uneven_count(int src, int dst, int salt) {
  const std::uint64_t h = mix64(static_cast<std::uint64_t>(src * 1000 + dst * 10 + salt));
  return h % 5 == 0 ? 0 : static_cast<std::size_t>(h % 3001) + 1;
}

// The model's time written out independently of LinkModel::transfer_time, truncated to whole ns
// (the implementation rounds up, so elapsed >= this whenever the implementation is right).
std::int64_t model_ns(double latency_us, double gbps, std::size_t bytes) {
  return static_cast<std::int64_t>(latency_us * 1e3 + static_cast<double>(bytes) / (gbps * 1e9) * 1e9);
}

template <class Fn>
std::int64_t elapsed_ns(Fn&& fn) {
  const auto start = Clock::now();
  fn();
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - start).count();
}

// CPU time of the whole process (all threads), in seconds.
double process_cpu_seconds() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  auto seconds = [](const timeval& t) {
    return static_cast<double>(t.tv_sec) + 1e-6 * static_cast<double>(t.tv_usec);
  };
  return seconds(usage.ru_utime) + seconds(usage.ru_stime);
}

}  // namespace

TEST_CASE("the link model's time and bytes per operation", "[comm][link]") {
  const LinkModel model{100, 2};
  CHECK(model.transfer_time(0) == std::chrono::microseconds(100));
  CHECK(model.transfer_time(2'000'000) == std::chrono::microseconds(1100));  // 2 MB at 2 GB/s
  CHECK(LinkModel{0, 3}.transfer_time(1) == std::chrono::nanoseconds(1));     // 1/3 ns rounds up
  CHECK(LinkModel{5, 0}.transfer_time(std::size_t{1} << 40) == std::chrono::microseconds(5));

  const std::vector<std::size_t> sends{5, 7, 11}, recvs{13, 2, 3};
  CHECK(moe::comm::alltoallv_link_bytes(1, sends, recvs) == 16);  // max(5 + 11, 13 + 3)
  CHECK(moe::comm::alltoallv_link_bytes(0, sends, recvs) == 18);  // max(7 + 11, 2 + 3)
  CHECK(moe::comm::alltoall_link_bytes(4, 10) == 30);
  CHECK(moe::comm::alltoall_link_bytes(1, 10) == 0);
  CHECK(moe::comm::allgather_link_bytes(3, 10) == 20);
  CHECK(moe::comm::allreduce_link_bytes(4, 1000) == 1500);
  CHECK(moe::comm::allreduce_link_bytes(2, 1000) == 1000);
  CHECK(moe::comm::allreduce_link_bytes(3, 10) == 14);  // 40 / 3 rounded up
  CHECK(moe::comm::allreduce_link_bytes(1, 1000) == 0);

  CHECK_THROWS_AS((LinkModel{-1, 1}.validate()), std::invalid_argument);
  CHECK_THROWS_AS((LinkModel{1, -1}.validate()), std::invalid_argument);
  CHECK_THROWS_AS((LinkModel{1, std::nan("")}.validate()), std::invalid_argument);
  CHECK_THROWS_AS((LinkModel{std::numeric_limits<double>::infinity(), 1}.validate()),
                  std::invalid_argument);
  CHECK_THROWS_AS(SimulatedLinkCommunicator(std::unique_ptr<Communicator>{}, LinkModel{}),
                  std::invalid_argument);
  auto world = MpiCommunicator::world();
  CHECK_THROWS_AS(SimulatedLinkCommunicator(*world, LinkModel{0, -2}), std::invalid_argument);
}

TEST_CASE("a simulated link returns exactly what the wrapped communicator returns", "[comm][link]") {
  auto world = MpiCommunicator::world();
  SimulatedLinkCommunicator link(*world, LinkModel{20, 10});
  REQUIRE(link.rank() == world->rank());
  REQUIRE(link.size() == world->size());
  REQUIRE(link.host() == world->host());
  const std::vector<int> ids = world_ids(*world);
  const int me = world->rank();
  const auto n = static_cast<std::size_t>(world->size());

  SECTION("alltoallv") {
    for (int salt = 0; salt < 3; ++salt) {
      const Counts c = make_counts(*world, [salt](int s, int d) { return uneven_count(s, d, salt); });
      const std::vector<std::byte> via_link = run_alltoallv(link, c, ids);
      CHECK(via_link == run_alltoallv(*world, c, ids));
      CHECK(pattern_ok(link, c, ids, via_link));
    }
  }
  SECTION("alltoall and allgather") {
    constexpr std::size_t block = 37;
    std::vector<std::byte> send(block * n), a(block * n), b(block * n);
    for (std::size_t p = 0; p < n; ++p) fill_block(send.data() + block * p, me, static_cast<int>(p), block);
    link.alltoall(send.data(), a.data(), block);
    world->alltoall(send.data(), b.data(), block);
    CHECK(a == b);
    for (std::size_t q = 0; q < n; ++q) CHECK(first_mismatch(a.data() + block * q, static_cast<int>(q), me, block) == block);
    link.allgather(send.data(), a.data(), block);
    world->allgather(send.data(), b.data(), block);
    CHECK(a == b);
    for (std::size_t q = 0; q < n; ++q) CHECK(first_mismatch(a.data() + block * q, static_cast<int>(q), 0, block) == block);
  }
  SECTION("allreduce of every element type and operation") {
    for (ReduceOp op : {ReduceOp::sum, ReduceOp::max, ReduceOp::min}) {
      std::vector<float> f(1000), f2;
      std::vector<double> d(1000), d2;
      std::vector<std::int64_t> i(1000), i2;
      for (std::size_t k = 0; k < f.size(); ++k) {
        const std::uint64_t h = mix64(static_cast<std::uint64_t>(me) * 100003 + k);
        f[k] = static_cast<float>(h % 10007) * 0.37f - 1000.0f;
        d[k] = static_cast<double>(h % 1000003) * 1e-3 - 500.0;
        i[k] = static_cast<std::int64_t>(h % 100000) - 50000;
      }
      f2 = f, d2 = d, i2 = i;
      link.allreduce(std::span<float>(f), op);
      world->allreduce(std::span<float>(f2), op);
      link.allreduce(std::span<double>(d), op);
      world->allreduce(std::span<double>(d2), op);
      link.allreduce(std::span<std::int64_t>(i), op);
      world->allreduce(std::span<std::int64_t>(i2), op);
      CHECK(f == f2);
      CHECK(d == d2);
      CHECK(i == i2);
    }
    link.barrier();
  }
  SECTION("split returns a decorated communicator over the same group") {
    // Reversed order inside each group, so a key that was dropped would show.
    const int color = me % 2;
    auto sub = link.split(color, -me);
    auto plain = world->split(color, -me);
    REQUIRE(sub != nullptr);
    const auto* decorated = dynamic_cast<const SimulatedLinkCommunicator*>(sub.get());
    REQUIRE(decorated != nullptr);
    CHECK(decorated->model().latency_us == 20);
    CHECK(decorated->model().bandwidth_gbps == 10);
    CHECK(sub->rank() == plain->rank());
    CHECK(sub->size() == plain->size());
    const std::vector<int> sub_ids = world_ids(*sub);
    CHECK(sub_ids == world_ids(*plain));
    const Counts c = make_counts(*sub, [](int s, int d) { return uneven_count(s, d, 7); });
    const std::vector<std::byte> via_link = run_alltoallv(*sub, c, sub_ids);
    CHECK(via_link == run_alltoallv(*plain, c, sub_ids));
    CHECK(pattern_ok(*sub, c, sub_ids, via_link));

    // Rank 0 joins no group: nullptr from the decorator too.
    auto none = link.split(me == 0 ? MPI_UNDEFINED : 0, me);
    CHECK((none == nullptr) == (me == 0));
  }
}

TEST_CASE("no operation completes before latency + bytes / bandwidth", "[comm][link][timing]") {
  auto world = MpiCommunicator::world();
  constexpr double latency_us = 300, gbps = 1;
  SimulatedLinkCommunicator link(*world, LinkModel{latency_us, gbps});
  const int num_ranks = world->size();
  const auto peers = static_cast<std::size_t>(num_ranks - 1);
  const std::vector<int> ids = world_ids(*world);
  // One rank crosses no link: nothing to wait for, and no timing claim to make.
  auto expected = [&](std::size_t bytes) { return num_ranks > 1 ? model_ns(latency_us, gbps, bytes) : 0; };

  for (const std::size_t per_peer : {std::size_t{0}, std::size_t{64} << 10, std::size_t{1} << 20}) {
    INFO("alltoallv of " << per_peer << " bytes per peer");
    const Counts c = make_counts(*world, [per_peer](int, int) { return per_peer; });
    world->barrier();
    std::vector<std::byte> recv;
    const std::int64_t ns = elapsed_ns([&] { recv = run_alltoallv(link, c, ids); });
    CHECK(ns >= expected(peers * per_peer));
    CHECK(pattern_ok(link, c, ids, recv));
  }
  {
    // Rank r sends (r + 1) * 64 KiB to each peer and receives (q + 1) * 64 KiB from peer q: the
    // busier direction counts.
    constexpr std::size_t unit = 64 << 10;
    const Counts c = make_counts(*world, [](int s, int) { return static_cast<std::size_t>(s + 1) * unit; });
    const std::size_t sent = peers * static_cast<std::size_t>(world->rank() + 1) * unit;
    const std::size_t received =
        (static_cast<std::size_t>(num_ranks * (num_ranks + 1) / 2) - static_cast<std::size_t>(world->rank() + 1)) * unit;
    world->barrier();
    const std::int64_t ns = elapsed_ns([&] { run_alltoallv(link, c, ids); });
    CHECK(ns >= expected(std::max(sent, received)));
  }
  {
    constexpr std::size_t block = 512 << 10;
    std::vector<std::byte> send(block * (peers + 1)), recv(send.size());
    world->barrier();
    CHECK(elapsed_ns([&] { link.alltoall(send.data(), recv.data(), block); }) >= expected(peers * block));
    world->barrier();
    CHECK(elapsed_ns([&] { link.allgather(send.data(), recv.data(), block); }) >= expected(peers * block));
  }
  {
    std::vector<float> data(1 << 20, 1.0f);
    const std::size_t bytes = data.size() * sizeof(float);
    world->barrier();
    CHECK(elapsed_ns([&] { link.allreduce(std::span<float>(data), ReduceOp::sum); }) >=
          expected(2 * peers * bytes / static_cast<std::size_t>(num_ranks)));
    CHECK(data[12345] == static_cast<float>(num_ranks));
  }
  world->barrier();
  CHECK(elapsed_ns([&] { link.barrier(); }) >= expected(0));
  CHECK(elapsed_ns([&] { link.split(0, 0); }) >= expected(0));
}

TEST_CASE("waiting for a simulated transfer leaves the CPU free", "[comm][link][timing]") {
  auto world = MpiCommunicator::world();
  if (world->size() == 1) return;  // nothing is delayed on one rank (see the model test)
  // 200 ms of latency around a 4 KiB exchange: the wait dwarfs the real transfer.
  SimulatedLinkCommunicator link(*world, LinkModel{200'000, 10});
  const std::vector<int> ids = world_ids(*world);
  const Counts c = make_counts(*world, [](int, int) { return std::size_t{4096}; });
  world->barrier();
  const double cpu_start = process_cpu_seconds();
  const auto wall_start = Clock::now();
  const std::vector<std::byte> recv = run_alltoallv(link, c, ids);
  const double wall = std::chrono::duration<double>(Clock::now() - wall_start).count();
  const double cpu = process_cpu_seconds() - cpu_start;
  INFO("wall " << wall << " s, CPU " << cpu << " s");
  CHECK(wall >= 0.2);
  CHECK(cpu < 0.2 * wall);
  CHECK(pattern_ok(link, c, ids, recv));
}

TEST_CASE("two decorated communicators are used from two threads at once", "[comm][link][threads]") {
  int level = 0;
  MPI_Query_thread(&level);
  if (level < MPI_THREAD_MULTIPLE) {
    WARN("MPI does not provide MPI_THREAD_MULTIPLE here: two-thread use not tested");
    return;
  }
  auto world = MpiCommunicator::world();
  SimulatedLinkCommunicator link(*world, LinkModel{500, 2});
  // Two communicators over the same ranks, each with its own MPI communicator: the way the
  // runtime gives its exchange thread a communicator of its own.
  auto first = link.split(0, world->rank());
  auto second = link.split(0, world->rank());
  REQUIRE(first != nullptr);
  REQUIRE(second != nullptr);
  const std::vector<int> ids = world_ids(*world);
  const int num_ranks = world->size();

  struct Outcome {
    bool results_ok = true;
    bool times_ok = true;
    std::string error;
  };
  auto work = [&](Communicator& comm, int salt, Outcome& out) {
    try {
      for (int call = 0; call < 8; ++call) {
        const Counts c = make_counts(comm, [&](int s, int d) { return uneven_count(s, d, salt + call) * 64; });
        std::vector<std::byte> recv;
        const std::int64_t ns = elapsed_ns([&] { recv = run_alltoallv(comm, c, ids); });
        const std::size_t bytes = moe::comm::alltoallv_link_bytes(comm.rank(), c.sends, c.recvs);
        if (num_ranks > 1 && ns < model_ns(500, 2, bytes)) out.times_ok = false;
        if (!pattern_ok(comm, c, ids, recv)) out.results_ok = false;
        std::vector<double> values(257, static_cast<double>(salt));
        comm.allreduce(std::span<double>(values), ReduceOp::sum);
        if (values[256] != static_cast<double>(salt * num_ranks)) out.results_ok = false;
      }
    } catch (const std::exception& e) {
      out.error = e.what();
    }
  };
  Outcome a, b;
  std::thread other([&] { work(*second, 100, b); });
  work(*first, 200, a);
  other.join();
  CHECK(a.error.empty());
  CHECK(b.error.empty());
  CHECK(a.results_ok);
  CHECK(b.results_ok);
  CHECK(a.times_ok);
  CHECK(b.times_ok);
}

TEST_CASE("two classes: blocks to other nodes pay the link between nodes", "[comm][link][nodes]") {
  auto world = MpiCommunicator::world();
  if (world->size() == 1) return;
  const int per_node = world->size() >= 4 ? 2 : 1;
  std::vector<int> nodes(static_cast<std::size_t>(world->size()));
  for (int r = 0; r < world->size(); ++r) nodes[static_cast<std::size_t>(r)] = r / per_node;
  // Inside a node free; between nodes 1 s of latency and 1 GB/s: unmistakable either way.
  SimulatedLinkCommunicator link(*world, LinkModel{0, 0}, LinkModel{1'000'000, 1}, nodes);
  const std::vector<int> ids = world_ids(*world);
  constexpr std::size_t block = 256 << 10;
  const Counts c = make_counts(*world, [](int, int) { return block; });
  const auto remote = static_cast<std::size_t>(world->size() - per_node);
  world->barrier();
  std::vector<std::byte> recv;
  CHECK(elapsed_ns([&] { recv = run_alltoallv(link, c, ids); }) >= model_ns(1'000'000, 1, remote * block));
  CHECK(pattern_ok(link, c, ids, recv));

  // The ranks of one node, split off, keep their nodes: no peer between nodes, no second.
  auto node = link.split(world->rank() / per_node, world->rank());
  REQUIRE(node != nullptr);
  const Counts inside = make_counts(*node, [](int, int) { return block; });
  const std::vector<int> node_ids = world_ids(*node);
  node->barrier();
  CHECK(elapsed_ns([&] { recv = run_alltoallv(*node, inside, node_ids); }) < 500'000'000);
  CHECK(pattern_ok(*node, inside, node_ids, recv));
}
