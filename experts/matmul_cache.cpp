#include "experts/matmul_cache.hpp"

#include <oneapi/dnnl/dnnl.hpp>

#include <array>
#include <atomic>
#include <bit>
#include <cstddef>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <unordered_map>
#include <vector>

namespace moe::experts::detail {
namespace {

// Enough for every kind x tail combination of a layer (and its router) many times over; the
// bound only guards memory if a program multiplies many unrelated shapes.
constexpr std::size_t kCacheCapacity = 1024;

[[noreturn]] void fail(const char* call, dnnl_status_t status) {
  throw std::runtime_error(std::string("oneDNN ") + call + " failed: status " +
                           std::to_string(static_cast<int>(status)));
}

void check(dnnl_status_t status, const char* call) {
  if (status != dnnl_success) fail(call, status);
}

dnnl::engine& cpu_engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// One stream per thread: oneDNN does not promise that a stream may be shared between threads.
dnnl_stream_t thread_stream() {
  thread_local dnnl::stream stream(cpu_engine());
  return stream.get();
}

// Grow-only, 64-byte aligned scratchpad of this thread (scratchpad_mode::user): no allocation once
// it has reached the largest primitive's need.
void* thread_scratchpad(std::size_t bytes) {
  thread_local std::vector<std::byte> buffer;
  if (buffer.size() < bytes + 64) buffer.resize(bytes + 64);
  const auto address = reinterpret_cast<std::uintptr_t>(buffer.data());
  return buffer.data() + ((64 - address % 64) % 64);
}

dnnl::algorithm eltwise_of(Activation a) {
  switch (a) {
    case Activation::gelu: return dnnl::algorithm::eltwise_gelu_erf;
    case Activation::gelu_tanh: return dnnl::algorithm::eltwise_gelu_tanh;
    case Activation::relu: return dnnl::algorithm::eltwise_relu;
    case Activation::silu:
    case Activation::swiglu: break;
  }
  return dnnl::algorithm::eltwise_swish;  // silu(x) = x * sigmoid(1 * x)
}

// Memory descriptors of the operands, as oneDNN's C structs (no std::vector of dims).
struct Descs {
  dnnl_memory_desc_t a, b, c, bias;
};

dnnl_memory_desc_t matrix_desc(dnnl_dim_t rows, dnnl_dim_t cols, dnnl_data_type_t type,
                               dnnl_dim_t row_stride, dnnl_dim_t col_stride) {
  dnnl_memory_desc_t md;
  const dnnl_dims_t dims{rows, cols};
  const dnnl_dims_t strides{row_stride, col_stride};
  check(dnnl_memory_desc_init_by_strides(&md, 2, dims, type, strides),
        "dnnl_memory_desc_init_by_strides");
  return md;
}

Descs descs_of(const MatmulProblem& p) {
  const dnnl_dim_t m = p.m, k = p.k, lda = p.lda, ldb = p.ldb, ldc = p.ldc;
  const dnnl_data_type_t t = p.type == DataType::bf16 ? dnnl_bf16 : dnnl_f32;
  Descs d{};
  d.a = p.trans_a ? matrix_desc(m, k, t, 1, lda) : matrix_desc(m, k, t, lda, 1);
  d.b = p.trans_b ? matrix_desc(k, p.n, t, 1, ldb) : matrix_desc(k, p.n, t, ldb, 1);
  d.c = matrix_desc(m, p.n, dnnl_f32, ldc, 1);
  if (p.bias) d.bias = matrix_desc(1, p.n, dnnl_f32, p.n, 1);
  return d;
}

dnnl::matmul::primitive_desc make_pd(const MatmulProblem& p) {
  const Descs d = descs_of(p);
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  if (p.alpha != 1.0f) attr.set_output_scales(0, {p.alpha});
  dnnl::post_ops ops;
  // Order matters: dst = act(alpha * AB + bias + beta * dst).
  if (p.beta != 0.0f) ops.append_sum(p.beta);
  if (p.activation) {
    const float alpha = p.activation_kind == Activation::silu ? 1.0f : 0.0f;  // swish's beta
    ops.append_eltwise(1.0f, eltwise_of(p.activation_kind), alpha, 0.0f);
  }
  attr.set_post_ops(ops);
  const dnnl::memory::desc a(d.a), b(d.b), c(d.c), bias(d.bias);
  const auto desc = p.bias ? dnnl::matmul::desc(a, b, bias, c) : dnnl::matmul::desc(a, b, c);
  return dnnl::matmul::primitive_desc(desc, attr, cpu_engine());
}

// A primitive and the memory objects it runs on (their handles change per call).
struct Entry {
  std::mutex mutex;  // one execution at a time: the memory objects are shared state
  dnnl::matmul primitive;
  dnnl_memory_desc_t scratchpad{};
  std::array<dnnl_memory_t, 5> memory{};  // a, b, c, bias, scratchpad
  std::uint64_t last_use = 0;
  ~Entry() {
    for (dnnl_memory_t m : memory) {
      if (m != nullptr) dnnl_memory_destroy(m);
    }
  }
};

dnnl_memory_t create_memory(const dnnl_memory_desc_t& md) {
  dnnl_memory_t m = nullptr;
  check(dnnl_memory_create(&m, &md, cpu_engine().get(), DNNL_MEMORY_NONE), "dnnl_memory_create");
  return m;
}

using Key = std::array<std::int64_t, 9>;

Key key_of(const MatmulProblem& p) {
  const std::int64_t flags = (p.trans_a ? 1 : 0) | (p.trans_b ? 2 : 0) | (p.bias ? 4 : 0) |
                             (p.activation ? 8 : 0) | (static_cast<std::int64_t>(p.type) << 4) |
                             (static_cast<std::int64_t>(p.activation_kind) << 8);
  return {p.m,   p.n,   p.k, p.lda, p.ldb, p.ldc, flags, std::bit_cast<std::int32_t>(p.alpha),
          std::bit_cast<std::int32_t>(p.beta)};
}

struct KeyHash {
  std::size_t operator()(const Key& key) const {
    std::uint64_t h = 1469598103934665603ull;  // FNV-1a over the fields
    for (std::int64_t v : key) h = (h ^ static_cast<std::uint64_t>(v)) * 1099511628211ull;
    return static_cast<std::size_t>(h);
  }
};

class Cache {
 public:
  std::shared_ptr<Entry> get(const MatmulProblem& p) {
    const Key key = key_of(p);
    std::lock_guard lock(mutex_);
    auto it = entries_.find(key);
    if (it == entries_.end()) {
      if (entries_.size() >= kCacheCapacity) evict_oldest();
      it = entries_.emplace(key, make_entry(p)).first;
    }
    it->second->last_use = ++clock_;
    return it->second;  // a shared_ptr copy: an evicted entry lives until its last call ends
  }

 private:
  static std::shared_ptr<Entry> make_entry(const MatmulProblem& p) {
    auto entry = std::make_shared<Entry>();
    const auto pd = make_pd(p);
    entry->primitive = dnnl::matmul(pd);
    entry->scratchpad = pd.scratchpad_desc().data;
    const Descs d = descs_of(p);
    entry->memory = {create_memory(d.a), create_memory(d.b), create_memory(d.c),
                     p.bias ? create_memory(d.bias) : nullptr, create_memory(entry->scratchpad)};
    return entry;
  }

  void evict_oldest() {
    auto oldest = entries_.begin();
    for (auto it = entries_.begin(); it != entries_.end(); ++it) {
      if (it->second->last_use < oldest->second->last_use) oldest = it;
    }
    entries_.erase(oldest);
  }

  std::mutex mutex_;
  std::unordered_map<Key, std::shared_ptr<Entry>, KeyHash> entries_;
  std::uint64_t clock_ = 0;
};

Cache& cache() {
  cpu_engine();  // constructed first, so destroyed after the primitives that use it
  static Cache c;
  return c;
}

void execute(Entry& entry, const void* a, const void* b, float* c,
             const float* bias) {
  std::lock_guard lock(entry.mutex);
  void* scratch = thread_scratchpad(dnnl_memory_desc_get_size(&entry.scratchpad));
  const auto& mem = entry.memory;
  const std::array<void*, 5> handles{const_cast<void*>(a), const_cast<void*>(b), c,
                                     const_cast<float*>(bias), scratch};
  const std::array<int, 5> roles{DNNL_ARG_SRC, DNNL_ARG_WEIGHTS, DNNL_ARG_DST, DNNL_ARG_BIAS,
                                 DNNL_ARG_SCRATCHPAD};
  std::array<dnnl_exec_arg_t, 5> args{};
  int num_args = 0;
  for (std::size_t i = 0; i < mem.size(); ++i) {
    if (mem[i] == nullptr) continue;
    check(dnnl_memory_set_data_handle(mem[i], handles[i]), "dnnl_memory_set_data_handle");
    args[static_cast<std::size_t>(num_args++)] = {roles[i], mem[i]};
  }
  // The C API with an array on the stack: the C++ one builds an std::unordered_map per call.
  const dnnl_stream_t stream = thread_stream();
  check(dnnl_primitive_execute(entry.primitive.get(), stream, num_args, args.data()),
        "dnnl_primitive_execute(matmul)");
  check(dnnl_stream_wait(stream), "dnnl_stream_wait");
}

std::atomic<int> policy_setting{-1};  // -1: not chosen yet

RowPolicy automatic_policy() {
  MatmulProblem probe;
  probe.m = probe.n = probe.k = probe.lda = probe.ldb = probe.ldc = 256;
  probe.trans_b = true;
  const std::string impl = implementation(probe);
  return impl.rfind("gemm", 0) == 0 ? RowPolicy::sgemm : RowPolicy::blocked;
}

}  // namespace

RowPolicy row_policy() {
  int p = policy_setting.load();
  if (p < 0) {
    p = static_cast<int>(automatic_policy());
    int expected = -1;
    if (!policy_setting.compare_exchange_strong(expected, p)) p = expected;
  }
  return static_cast<RowPolicy>(p);
}

void set_row_policy(RowPolicy policy) { policy_setting = static_cast<int>(policy); }

bool native_bf16() {
  static const bool supported = [] {
    MatmulProblem probe;
    probe.m = probe.n = probe.k = probe.lda = probe.ldb = probe.ldc = 64;
    probe.type = DataType::bf16;
    try {
      make_pd(probe);
      return true;
    } catch (const dnnl::error&) {
      return false;
    }
  }();
  return supported;
}

std::string implementation(const MatmulProblem& problem) {
  return make_pd(problem).impl_info_str();
}

void run(const MatmulProblem& p, const void* a, const void* b, float* c, const float* bias) {
  // Blocked: M and K each as a multiple of kRowQuantum plus a tail. K is split only without a
  // fused activation (the activation needs the whole sum); its second piece accumulates.
  const std::int64_t elem = p.type == DataType::bf16 ? 2 : 4;  // bytes
  const auto* a_bytes = static_cast<const std::byte*>(a);
  const auto* b_bytes = static_cast<const std::byte*>(b);
  const std::int64_t m_bulk = p.m / kRowQuantum * kRowQuantum;
  const std::int64_t k_bulk = p.activation ? p.k : p.k / kRowQuantum * kRowQuantum;
  for (const auto& [m0, m1] : {std::pair{std::int64_t{0}, m_bulk}, std::pair{m_bulk, p.m}}) {
    if (m1 == m0) continue;
    for (const auto& [k0, k1] : {std::pair{std::int64_t{0}, k_bulk}, std::pair{k_bulk, p.k}}) {
      if (k1 == k0) continue;
      MatmulProblem piece = p;
      piece.m = m1 - m0;
      piece.k = k1 - k0;
      if (k0 > 0) {  // the rest of the sum, added to the first piece's result
        piece.beta = 1.0f;
        piece.bias = false;
      }
      // Element (i, j) of op(A) sits at i*lda + j (or j*lda + i when transposed).
      const std::int64_t a_offset = p.trans_a ? k0 * p.lda + m0 : m0 * p.lda + k0;
      const std::int64_t b_offset = p.trans_b ? k0 : k0 * p.ldb;
      execute(*cache().get(piece), a_bytes + a_offset * elem,
              b_bytes + b_offset * elem, c + m0 * p.ldc, piece.bias ? bias : nullptr);
    }
  }
}

}  // namespace moe::experts::detail
