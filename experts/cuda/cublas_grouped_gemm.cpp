#include "experts/cuda/cublas_grouped_gemm.hpp"

#include <limits>
#include <stdexcept>
#include <string>

namespace moe::experts {
namespace {

[[noreturn]] void fail(const char* call, const std::string& why) {
  throw std::runtime_error(std::string("moe-ep: ") + call + " failed: " + why);
}

void check(cudaError_t code, const char* call) {
  if (code != cudaSuccess) fail(call, cudaGetErrorString(code));
}

void check(cublasStatus_t code, const char* call) {
  if (code != CUBLAS_STATUS_SUCCESS) fail(call, cublasGetStatusString(code));
}

int as_int(std::int64_t v, const char* what) {
  if (v < 0 || v > std::numeric_limits<int>::max()) {
    throw std::invalid_argument(std::string("moe-ep: grouped GEMM: ") + what + " = " +
                                std::to_string(v) + " does not fit cuBLAS's int");
  }
  return static_cast<int>(v);
}

}  // namespace

CublasGroupedGemm::CublasGroupedGemm(cudaStream_t stream) : stream_(stream) {
  check(cublasCreate(&handle_), "cublasCreate");
  check(cublasSetStream(handle_, stream_), "cublasSetStream");
  check(cublasSetPointerMode(handle_, CUBLAS_POINTER_MODE_HOST), "cublasSetPointerMode");
  check(cudaEventCreateWithFlags(&staged_, cudaEventDisableTiming), "cudaEventCreateWithFlags");
}

CublasGroupedGemm::~CublasGroupedGemm() {
  // Teardown errors cannot be reported from a destructor; the calls release what they can.
  if (staged_ != nullptr) cudaEventSynchronize(staged_);
  cudaFreeHost(staging_);
  cudaFree(device_pointers_);
  if (staged_ != nullptr) cudaEventDestroy(staged_);
  if (handle_ != nullptr) cublasDestroy(handle_);
}

void CublasGroupedGemm::reserve(std::size_t max_groups) {
  if (max_groups <= capacity_) return;
  check(cudaEventSynchronize(staged_), "cudaEventSynchronize");
  cudaFreeHost(staging_);
  cudaFree(device_pointers_);
  staging_ = nullptr;
  device_pointers_ = nullptr;
  capacity_ = 0;
  const std::size_t bytes = 3 * max_groups * sizeof(void*);
  check(cudaMallocHost(reinterpret_cast<void**>(&staging_), bytes), "cudaMallocHost");
  check(cudaMalloc(reinterpret_cast<void**>(&device_pointers_), bytes), "cudaMalloc");
  for (auto* v : {&m_, &n_, &k_, &lda_, &ldb_, &ldc_, &group_size_}) v->reserve(max_groups);
  trans_a_.reserve(max_groups);
  trans_b_.reserve(max_groups);
  alpha_.reserve(max_groups);
  beta_.reserve(max_groups);
  capacity_ = max_groups;
}

void CublasGroupedGemm::run(Op op_a, Op op_b, float alpha, float beta,
                            std::span<const GemmGroup> groups) {
  if (groups.size() > capacity_) {
    throw std::invalid_argument("moe-ep: grouped GEMM: " + std::to_string(groups.size()) +
                                " groups, but room was reserved for " + std::to_string(capacity_));
  }
  for (auto* v : {&m_, &n_, &k_, &lda_, &ldb_, &ldc_, &group_size_}) v->clear();
  trans_a_.clear();
  trans_b_.clear();
  alpha_.clear();
  beta_.clear();
  // The staging area is reused: wait until the previous run's copy has left it.
  check(cudaEventSynchronize(staged_), "cudaEventSynchronize");
  const std::size_t count = groups.size();
  std::size_t used = 0;
  for (const GemmGroup& g : groups) {
    if (g.m == 0 || g.n == 0 || g.k == 0) continue;
    const ColumnMajorGemm view = column_major_view(op_a, op_b, g);
    trans_a_.push_back(view.transpose_a ? CUBLAS_OP_T : CUBLAS_OP_N);
    trans_b_.push_back(view.transpose_b ? CUBLAS_OP_T : CUBLAS_OP_N);
    m_.push_back(as_int(view.m, "n"));
    n_.push_back(as_int(view.n, "m"));
    k_.push_back(as_int(view.k, "k"));
    lda_.push_back(as_int(view.lda, "ldb"));
    ldb_.push_back(as_int(view.ldb, "lda"));
    ldc_.push_back(as_int(view.ldc, "ldc"));
    alpha_.push_back(alpha);
    beta_.push_back(beta);
    group_size_.push_back(1);
    staging_[used] = view.a;
    staging_[count + used] = view.b;
    staging_[2 * count + used] = view.c;
    ++used;
  }
  if (used == 0) return;
  check(cudaMemcpyAsync(device_pointers_, staging_, 3 * count * sizeof(void*), cudaMemcpyHostToDevice,
                        stream_),
        "cudaMemcpyAsync");
  check(cudaEventRecord(staged_, stream_), "cudaEventRecord");
  const void* const* first = device_pointers_;
  const void* const* second = device_pointers_ + count;
  // The C pointers were staged as const void*; cuBLAS writes through them.
  void* const* result = const_cast<void**>(device_pointers_ + 2 * count);
  check(cublasGemmGroupedBatchedEx(handle_, trans_a_.data(), trans_b_.data(), m_.data(), n_.data(),
                                   k_.data(), alpha_.data(), first, CUDA_R_32F, lda_.data(), second,
                                   CUDA_R_32F, ldb_.data(), beta_.data(), result, CUDA_R_32F,
                                   ldc_.data(), static_cast<int>(used), group_size_.data(),
                                   CUBLAS_COMPUTE_32F),
        "cublasGemmGroupedBatchedEx");
}

}  // namespace moe::experts
