// How NcclCommunicator reads one poll of an operation it waits for (CUDA builds only): the
// communicator's asynchronous state (ncclCommGetAsyncError) and the stream's (cudaStreamQuery).
// Host logic only, so it is unit-tested without a GPU (tests/comm/test_nccl_watchdog.cpp).
#pragma once

#include <cuda_runtime_api.h>
#include <nccl.h>

namespace moe::comm {

enum class NcclWaitState {
  pending,      // NCCL still enqueuing (non-blocking communicator) or the stream still running
  done,         // everything enqueued has completed
  nccl_failed,  // NCCL reported an asynchronous error (a peer's network failed, ...)
  cuda_failed,  // the stream reported an error
};

// `async`: the state ncclCommGetAsyncError gave (or its own failure); `query`: cudaStreamQuery.
// While NCCL is still enqueuing (ncclInProgress) the stream may look idle only because the
// kernels are not launched yet, so the stream is not believed before NCCL says ncclSuccess.
constexpr NcclWaitState nccl_wait_state(ncclResult_t async, cudaError_t query) noexcept {
  if (async == ncclInProgress) return NcclWaitState::pending;
  if (async != ncclSuccess) return NcclWaitState::nccl_failed;
  if (query == cudaSuccess) return NcclWaitState::done;
  if (query == cudaErrorNotReady) return NcclWaitState::pending;
  return NcclWaitState::cuda_failed;
}

}  // namespace moe::comm
