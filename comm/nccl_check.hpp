// MOE_CHECK_CUDA / MOE_CHECK_NCCL: turn a failed CUDA runtime or NCCL call into a CommError that
// quotes the call, the library's error text (for NCCL also ncclGetLastError, which says *why*),
// the rank, the host and file:line. CUDA builds only (MOE_HAS_CUDA).
#pragma once

#include <cuda_runtime_api.h>
#include <nccl.h>

#include "comm/comm_error.hpp"

namespace moe::comm::detail {

// Builds the message for `code` returned by the call spelled `call` and throws CommError.
[[noreturn]] void throw_cuda_error(cudaError_t code, const char* call, const char* file, int line);
[[noreturn]] void throw_nccl_error(ncclResult_t code, const char* call, const char* file, int line);

}  // namespace moe::comm::detail

// Evaluates `call` once; throws moe::comm::CommError unless it returns cudaSuccess.
#define MOE_CHECK_CUDA(call)                                                            \
  do {                                                                                  \
    const cudaError_t moe_check_cuda_code_ = (call);                                    \
    if (moe_check_cuda_code_ != cudaSuccess) {                                          \
      ::moe::comm::detail::throw_cuda_error(moe_check_cuda_code_, #call, __FILE__, __LINE__); \
    }                                                                                   \
  } while (false)

// Evaluates `call` once; throws moe::comm::CommError unless it returns ncclSuccess.
#define MOE_CHECK_NCCL(call)                                                            \
  do {                                                                                  \
    const ncclResult_t moe_check_nccl_code_ = (call);                                   \
    if (moe_check_nccl_code_ != ncclSuccess) {                                          \
      ::moe::comm::detail::throw_nccl_error(moe_check_nccl_code_, #call, __FILE__, __LINE__); \
    }                                                                                   \
  } while (false)

// For a non-blocking communicator (NcclCommunicator's): like MOE_CHECK_NCCL, but ncclInProgress
// (the call was accepted and goes on in the background) is not a failure either.
#define MOE_CHECK_NCCL_ACCEPTED(call)                                                   \
  do {                                                                                  \
    const ncclResult_t moe_check_nccl_code_ = (call);                                   \
    if (moe_check_nccl_code_ != ncclSuccess && moe_check_nccl_code_ != ncclInProgress) { \
      ::moe::comm::detail::throw_nccl_error(moe_check_nccl_code_, #call, __FILE__, __LINE__); \
    }                                                                                   \
  } while (false)
