// After the first call with a given shape, forward and backward allocate no heap memory: every
// workspace has grown to its size and is reused. Proven by counting every C++ allocation of the
// process (this binary replaces the global operator new) while steady-state calls run, on every
// thread, the communication thread included.
//
// What this does not count: allocations made by oneDNN and MPI themselves (operator new called
// from inside libdnnl or libmpi, and their C-level mallocs). dnnl_sgemm allocates its packing
// buffers on every call (measured: one posix_memalign per GEMM) and gives no way to hand them in;
// MPI draws from its own free lists. Both are outside moe-ep's code; everything else counts,
// including libstdc++ called from moe-ep.
#include <catch2/catch.hpp>

#include <dlfcn.h>

#include <atomic>
#include <cstdlib>
#include <functional>
#include <new>
#include <string_view>

#include "comm/mpi_communicator.hpp"
#include "runtime/initialization.hpp"
#include "runtime/moe_layer.hpp"

namespace {
std::atomic<bool> counting{false};
std::atomic<long> allocations{0};

// True when the code asking for memory lives in oneDNN's or MPI's libraries.
bool from_backend_library(void* caller) {
  Dl_info info;
  if (dladdr(caller, &info) == 0 || info.dli_fname == nullptr) return false;
  const std::string_view file(info.dli_fname);
  for (std::string_view lib : {"libdnnl", "libmpi", "libopen-pal", "libopen-rte"}) {
    if (file.find(lib) != std::string_view::npos) return true;
  }
  return false;
}

__attribute__((noinline)) void* counted_alloc(std::size_t n, void* caller, std::size_t alignment = 0) {
  if (counting.load(std::memory_order_relaxed) && !from_backend_library(caller)) {
    allocations.fetch_add(1, std::memory_order_relaxed);
  }
  if (n == 0) n = 1;
  void* p = alignment > alignof(std::max_align_t) ? std::aligned_alloc(alignment, (n + alignment - 1) / alignment * alignment)
                                                  : std::malloc(n);
  if (p == nullptr) throw std::bad_alloc();
  return p;
}
}  // namespace

#define MOE_CALLER __builtin_return_address(0)
void* operator new(std::size_t n) { return counted_alloc(n, MOE_CALLER); }
void* operator new[](std::size_t n) { return counted_alloc(n, MOE_CALLER); }
void* operator new(std::size_t n, std::align_val_t a) {
  return counted_alloc(n, MOE_CALLER, static_cast<std::size_t>(a));
}
void* operator new[](std::size_t n, std::align_val_t a) {
  return counted_alloc(n, MOE_CALLER, static_cast<std::size_t>(a));
}
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  try { return counted_alloc(n, MOE_CALLER); } catch (...) { return nullptr; }
}
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept {
  try { return counted_alloc(n, MOE_CALLER); } catch (...) { return nullptr; }
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }

namespace {

using namespace moe;

long allocations_during(const std::function<void()>& body) {
  allocations = 0;
  counting = true;
  body();
  counting = false;
  return allocations.load();
}

}  // namespace

TEST_CASE("steady-state forward and backward allocate nothing", "[layer][allocation]") {
  auto world = comm::MpiCommunicator::world();
  struct Setting {
    const char* name;
    std::int64_t chunks;
    ExchangeKind exchange;
    WireFormat wire;
    DropPolicy policy;
  };
  for (const Setting& s : {Setting{"plain", 1, ExchangeKind::variable, WireFormat::fp32, DropPolicy::position},
                           Setting{"chunks=3,bf16,score", 3, ExchangeKind::variable, WireFormat::bf16, DropPolicy::score},
                           Setting{"padded,chunks=2", 2, ExchangeKind::padded, WireFormat::fp32, DropPolicy::position}}) {
    DYNAMIC_SECTION(s.name) {
      MoeConfig config;
      config.num_experts = 4 * world->size();
      config.d_model = 64;
      config.d_hidden = 96;
      config.capacity_factor = 1.0;
      config.z_loss_coef = 0.01;
      config.overlap_chunks = s.chunks;
      config.exchange = s.exchange;
      config.wire = s.wire;
      config.drop_policy = s.policy;
      MoeLayer layer(config, *world);
      init_parameters(layer, 3);
      const std::int64_t tokens = 200 + 37 * world->rank();
      std::vector<float> x(static_cast<std::size_t>(tokens * config.d_model));
      std::string stream = "input.rank";
      stream += std::to_string(world->rank());
      fill_normal(x, 5, stream);
      std::vector<float> y(x.size()), dy(x.size()), dx(x.size());
      dy = x;
      ForwardContext ctx;
      auto step = [&] {
        layer.forward(x, y, ctx);
        layer.backward(x, dy, dx, ctx);
      };
      step();  // warm-up: workspaces grow to this shape
      step();
      const long counted = allocations_during([&] {
        for (int i = 0; i < 3; ++i) step();
      });
      // Gather every rank's count so all ranks check the same thing.
      std::int64_t all = counted;
      world->allreduce(std::span<std::int64_t>(&all, 1), comm::ReduceOp::sum);
      CHECK(all == 0);
    }
  }
}

TEST_CASE("the allocation counter sees allocations", "[allocation]") {
  // Guards the test above against a counter that never counts.
  static std::vector<int>* volatile escape = nullptr;
  const long counted = allocations_during([] { escape = new std::vector<int>(1000); });
  delete escape;
  CHECK(counted >= 2);
}
