// The ordering the CUDA backend relies on, checked on the host: the device layer's calls to its
// backend during a chunked pass are recorded, and the recording must show, for every chunk c,
//   - its experts' work enqueued only after await_arrival(c), itself after dispatch(c);
//   - that work followed by packed(c), with no launch between packed(c) and combine(c),
// so that on a GPU the compute stream waits for each chunk's rows and the communication stream
// for each chunk's results. The host backend's events are no-ops: without this test a missing
// event call would pass every host test and fail only on a GPU.
#include <catch2/catch.hpp>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "comm/mpi_communicator.hpp"
#include "runtime/device/device_layer_impl.hpp"
#include "runtime/device/host_backend.hpp"
#include "runtime/layer_case.hpp"
#include "tests/support/case_bridge.hpp"

namespace {

using namespace moe;

// The host backend, recording every call that orders work: L a launch or GEMM, D/C dispatch or
// combine of a chunk, A await_arrival, P packed.
class RecordingBackend : public device::HostBackend {
 public:
  using HostBackend::HostBackend;
  std::vector<std::pair<char, int>> events;

  template <device::IndexOp Op>
  void launch(std::int64_t n, const Op& op) {
    events.emplace_back('L', -1);
    HostBackend::launch(n, op);
  }
  void gemm(experts::Op op_a, experts::Op op_b, float alpha, float beta,
            std::span<const experts::GemmGroup> groups) {
    events.emplace_back('L', -1);
    HostBackend::gemm(op_a, op_b, alpha, beta, groups);
  }
  void packed(int c) { events.emplace_back('P', c); }
  void await_arrival(int c) { events.emplace_back('A', c); }
  void dispatch(const DispatchPlan& plan, int c, const std::byte* send, std::byte* recv, std::size_t row_bytes) {
    events.emplace_back('D', c);
    HostBackend::dispatch(plan, c, send, recv, row_bytes);
  }
  void combine(const DispatchPlan& plan, int c, const std::byte* recv, std::byte* back, std::size_t row_bytes) {
    events.emplace_back('C', c);
    HostBackend::combine(plan, c, recv, back, row_bytes);
  }
};

static_assert(device::LayerBackend<RecordingBackend>);

// The problems of one pass's recording ("" when it keeps the rules above).
std::string order_problems(const std::vector<std::pair<char, int>>& events, int chunks) {
  std::string problems;
  const auto position = [&](char kind, int c) {
    for (std::size_t i = 0; i < events.size(); ++i) {
      if (events[i] == std::pair<char, int>(kind, c)) return static_cast<std::ptrdiff_t>(i);
    }
    return std::ptrdiff_t{-1};
  };
  for (int c = 0; c < chunks; ++c) {
    const std::string chunk = "chunk " + std::to_string(c) + ": ";
    const std::ptrdiff_t dispatched = position('D', c), awaited = position('A', c), combined = position('C', c);
    if (dispatched < 0 || awaited < 0 || combined < 0) {
      problems += chunk + "an exchange or the wait for it is missing; ";
      continue;
    }
    if (awaited < dispatched) problems += chunk + "waited for before it was dispatched; ";
    // From the wait to the combine: the chunk's work, then packed(c) and no launch after it.
    std::ptrdiff_t last_packed = -1, launches = 0;
    for (std::ptrdiff_t i = awaited + 1; i < combined; ++i) {
      const auto [kind, which] = events[static_cast<std::size_t>(i)];
      if (kind == 'L') {
        ++launches;
        if (last_packed >= 0) problems += chunk + "a launch between packed and combine; ";
      }
      if (kind == 'P' && which == c) last_packed = i;
      if (kind == 'A') problems += chunk + "another chunk awaited before this one went back; ";
    }
    if (launches == 0) problems += chunk + "no work between its arrival and its combine; ";
    if (last_packed < 0) problems += chunk + "combined without packed(c) after its work; ";
  }
  return problems;
}

}  // namespace

TEST_CASE("the device layer orders each chunk's work by the backend's events", "[device][layer]") {
  auto world = comm::MpiCommunicator::world();
  for (const auto& named : test::standard_cases(world->size())) {
    if (named.name != "shared_expert" && named.name != "experts64") continue;
    const LayerCase lc = layer_case_from_file(test::to_case_file(ref::make_case(named.spec)), named.name);
    for (int chunks : {1, 3}) {
      DYNAMIC_SECTION(named.name << ", " << chunks << " chunks") {
        MoeConfig config = lc.config;
        config.overlap_chunks = chunks;
        RecordingBackend backend(*world);
        device::DeviceLayer<RecordingBackend> layer(config, *world, backend);
        layer.load(device::case_parameters(lc, world->rank(), world->size()));
        const std::int64_t d = config.d_model, tokens = lc.tokens_per_rank[static_cast<std::size_t>(world->rank())];
        const auto rows = [&](const char* tensor) {
          return lc.file.tensors.at(tensor).f32().subspan(static_cast<std::size_t>(lc.first_row(world->rank()) * d),
                                                          static_cast<std::size_t>(tokens * d));
        };
        std::vector<float> y(static_cast<std::size_t>(tokens * d)), dx(y.size());
        backend.events.clear();
        layer.forward(rows("input").data(), tokens, y.data());
        CHECK(order_problems(backend.events, chunks) == "");
        backend.events.clear();
        layer.backward(rows("input").data(), rows("grad_output").data(), dx.data());
        CHECK(order_problems(backend.events, chunks) == "");
      }
    }
  }
}
