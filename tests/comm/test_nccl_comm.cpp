// Multi-rank tests of NcclCommunicator (CUDA builds). Without a usable GPU for every rank they
// print "moe-ep: skipped: ..." and pass; CTest reports them as skipped on that message. The
// watchdog case also needs 2 ranks (it skips at 1).
#include <catch2/catch.hpp>
#include <cuda_runtime_api.h>
#include <mpi.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include "comm/mpi_communicator.hpp"
#include "comm/nccl_check.hpp"
#include "comm/nccl_communicator.hpp"
#include "comm/watchdog.hpp"
#include "tests/comm/pattern.hpp"

namespace {

using moe::comm::MpiCommunicator;
using moe::comm::NcclCommunicator;
using moe::comm::ReduceOp;
using moe::comm::test::fill_block;
using moe::comm::test::first_mismatch;

// Why this job cannot run the GPU tests ("" when it can), the same on every rank: each rank needs
// its own device among those of its node.
std::string gpu_skip_reason(MpiCommunicator& world) {
  int num_devices = 0;  // cudaGetDeviceCount leaves it untouched when it fails (no driver: 35)
  const cudaError_t code = cudaGetDeviceCount(&num_devices);
  MPI_Comm node = MPI_COMM_NULL;
  MPI_Comm_split_type(world.native(), MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
  int ranks_on_node = 0;
  MPI_Comm_size(node, &ranks_on_node);
  MPI_Comm_free(&node);
  std::int64_t short_of_devices =
      (code != cudaSuccess || num_devices < ranks_on_node) ? 1 : 0;
  world.allreduce(std::span<std::int64_t>(&short_of_devices, 1), ReduceOp::max);
  if (short_of_devices == 0) return "";
  if (code != cudaSuccess) {
    return std::string("no CUDA device (cudaGetDeviceCount: ") + cudaGetErrorName(code) + " = " +
           std::to_string(static_cast<int>(code)) + ", " + cudaGetErrorString(code) + ")";
  }
  return "a rank has fewer CUDA devices on its node (" + std::to_string(num_devices) +
         " here) than ranks on that node (" + std::to_string(ranks_on_node) + ")";
}

// Owns device memory of `bytes` bytes.
struct DeviceBuffer {
  explicit DeviceBuffer(std::size_t bytes) : size(bytes) {
    if (bytes > 0) MOE_CHECK_CUDA(cudaMalloc(&data, bytes));
  }
  ~DeviceBuffer() { cudaFree(data); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  std::byte* bytes() const { return static_cast<std::byte*>(data); }
  void* data = nullptr;
  std::size_t size;
};

void to_device(DeviceBuffer& to, const void* from, std::size_t bytes) {
  if (bytes > 0) MOE_CHECK_CUDA(cudaMemcpy(to.data, from, bytes, cudaMemcpyHostToDevice));
}

void to_host(void* to, const DeviceBuffer& from, std::size_t bytes) {
  if (bytes > 0) MOE_CHECK_CUDA(cudaMemcpy(to, from.data, bytes, cudaMemcpyDeviceToHost));
}

std::size_t gpu_count(int src, int dst) {
  // Uneven, with empty blocks (every third pair) and sizes that are not multiples of 8.
  return (src + 2 * dst) % 3 == 0 ? 0 : static_cast<std::size_t>(1000 * src + 37 * dst + 5);
}

}  // namespace

TEST_CASE("NcclCommunicator exchanges and reduces device buffers", "[comm][nccl]") {
  auto world = MpiCommunicator::world();
  const std::string skip = gpu_skip_reason(*world);
  if (!skip.empty()) {
    WARN("moe-ep: skipped: " << skip);
    return;
  }
  MPI_Comm node = MPI_COMM_NULL;
  MPI_Comm_split_type(world->native(), MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
  int local_rank = 0;
  MPI_Comm_rank(node, &local_rank);
  MPI_Comm_free(&node);
  MOE_CHECK_CUDA(cudaSetDevice(local_rank));

  NcclCommunicator comm(*world);
  REQUIRE(comm.rank() == world->rank());
  REQUIRE(comm.size() == world->size());
  const int me = comm.rank();
  const auto n = static_cast<std::size_t>(comm.size());

  SECTION("alltoallv with uneven and empty blocks") {
    std::vector<std::size_t> send_bytes(n);
    std::vector<std::size_t> recv_bytes(n);
    for (std::size_t p = 0; p < n; ++p) {
      send_bytes[p] = gpu_count(me, static_cast<int>(p));
      recv_bytes[p] = gpu_count(static_cast<int>(p), me);
    }
    const std::size_t send_total = std::accumulate(send_bytes.begin(), send_bytes.end(), std::size_t{0});
    const std::size_t recv_total = std::accumulate(recv_bytes.begin(), recv_bytes.end(), std::size_t{0});
    std::vector<std::byte> host(std::max(send_total, recv_total));
    std::size_t offset = 0;
    for (std::size_t p = 0; p < n; ++p) {
      fill_block(host.data() + offset, me, static_cast<int>(p), send_bytes[p]);
      offset += send_bytes[p];
    }
    DeviceBuffer send(send_total);
    DeviceBuffer recv(recv_total);
    to_device(send, host.data(), send_total);
    comm.alltoallv(send.bytes(), send_bytes, recv.bytes(), recv_bytes);
    to_host(host.data(), recv, recv_total);
    offset = 0;
    for (std::size_t q = 0; q < n; ++q) {
      CHECK(first_mismatch(host.data() + offset, static_cast<int>(q), me, recv_bytes[q]) == recv_bytes[q]);
      offset += recv_bytes[q];
    }
  }

  SECTION("alltoall and allgather") {
    constexpr std::size_t block = 13;
    std::vector<std::byte> host(n * block);
    for (std::size_t p = 0; p < n; ++p) fill_block(host.data() + p * block, me, static_cast<int>(p), block);
    DeviceBuffer send(n * block);
    DeviceBuffer recv(n * block);
    to_device(send, host.data(), n * block);
    comm.alltoall(send.bytes(), recv.bytes(), block);
    to_host(host.data(), recv, n * block);
    for (std::size_t q = 0; q < n; ++q) {
      CHECK(first_mismatch(host.data() + q * block, static_cast<int>(q), me, block) == block);
    }
    fill_block(host.data(), me, -1, block);
    to_device(send, host.data(), block);
    comm.allgather(send.bytes(), recv.bytes(), block);
    to_host(host.data(), recv, n * block);
    for (std::size_t q = 0; q < n; ++q) {
      CHECK(first_mismatch(host.data() + q * block, static_cast<int>(q), -1, block) == block);
    }
  }

  SECTION("allreduce sum, max and min") {
    const std::int64_t size = comm.size();
    for (const ReduceOp op : {ReduceOp::sum, ReduceOp::max, ReduceOp::min}) {
      INFO("op " << static_cast<int>(op));
      std::vector<double> values(5);
      for (std::size_t i = 0; i < values.size(); ++i) {
        values[i] = static_cast<double>(me * 10 + static_cast<int>(i));
      }
      DeviceBuffer data(values.size() * sizeof(double));
      to_device(data, values.data(), data.size);
      comm.allreduce(std::span<double>(static_cast<double*>(data.data), values.size()), op);
      to_host(values.data(), data, data.size);
      for (std::size_t i = 0; i < values.size(); ++i) {
        const double k = static_cast<double>(i);
        const double s = static_cast<double>(size);
        const double expected = op == ReduceOp::sum   ? 10.0 * s * (s - 1) / 2 + k * s
                                : op == ReduceOp::max ? 10.0 * (s - 1) + k
                                                      : k;
        CHECK(values[i] == expected);
      }
    }
    comm.barrier();
  }

  SECTION("split into even and odd ranks") {
    auto group = comm.split(me % 2, me);
    REQUIRE(group != nullptr);
    CHECK(group->rank() == me / 2);
    CHECK(group->size() == (comm.size() - me % 2 + 1) / 2);
    std::int64_t host_value = me;
    DeviceBuffer value(sizeof host_value);
    to_device(value, &host_value, sizeof host_value);
    group->allreduce(std::span<std::int64_t>(static_cast<std::int64_t*>(value.data), 1), ReduceOp::sum);
    to_host(&host_value, value, sizeof host_value);
    std::int64_t expected = 0;
    for (int r = me % 2; r < comm.size(); r += 2) expected += r;
    CHECK(host_value == expected);
  }
}

TEST_CASE("NcclCommunicator's watchdog: a rank that never joins", "[comm][nccl][watchdog]") {
  auto world = MpiCommunicator::world();
  std::string skip = gpu_skip_reason(*world);
  if (skip.empty() && world->size() < 2) skip = "the watchdog case needs 2 or more ranks";
  if (!skip.empty()) {
    WARN("moe-ep: skipped: " << skip);
    return;
  }
  MPI_Comm node = MPI_COMM_NULL;
  MPI_Comm_split_type(world->native(), MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
  int local_rank = 0;
  MPI_Comm_rank(node, &local_rank);
  MPI_Comm_free(&node);
  MOE_CHECK_CUDA(cudaSetDevice(local_rank));

  NcclCommunicator comm(*world);
  constexpr double timeout = 1.5;
  comm.set_timeout(timeout);
  comm.set_watchdog_action(moe::comm::WatchdogAction::throw_error);
  comm.set_context({"probe", 7, "allreduce"});
  const bool late = comm.rank() == comm.size() - 1;
  std::vector<double> values(4, 1.0);
  DeviceBuffer data(values.size() * sizeof(double));
  to_device(data, values.data(), data.size);
  const std::span<double> device_values(static_cast<double*>(data.data), values.size());
  if (late) {
    // Joins only once every other rank has given up (and aborted its NCCL communicator): its own
    // watchdog or NCCL's error ends its wait, never a hang.
    std::this_thread::sleep_for(std::chrono::duration<double>(2 * timeout + 1));
    CHECK_THROWS_AS(comm.allreduce(device_values, ReduceOp::sum), moe::comm::CommError);
  } else {
    const auto start = std::chrono::steady_clock::now();
    try {
      comm.allreduce(device_values, ReduceOp::sum);
      FAIL("the allreduce completed without the late rank");
    } catch (const moe::comm::WatchdogTimeout& error) {
      const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      INFO(error.what());
      CHECK(waited >= timeout);
      CHECK(waited < timeout + 10.5);  // the bound plus the stream's drain after ncclCommAbort
      CHECK(std::string(error.what()).find("layer 'probe' call 7 phase 'allreduce'") != std::string::npos);
      CHECK(error.report().operation == "ncclAllReduce");
    }
    // The caller's device buffer was not reduced into after the exception.
    to_host(values.data(), data, data.size);
    for (const double v : values) CHECK(v == 1.0);
  }
  // Poisoned: refused at once, whatever ended the wait.
  CHECK_THROWS_WITH(comm.barrier(), Catch::Contains("unusable"));
  world->barrier();
}
