// The NCCL watchdog's reading of one poll (comm/nccl_wait_state.hpp): host logic of the CUDA
// build, tested without a GPU (no CUDA or NCCL function is called).
#include <catch2/catch.hpp>

#include "comm/nccl_wait_state.hpp"

using moe::comm::NcclWaitState;
using moe::comm::nccl_wait_state;

TEST_CASE("an NCCL wait is done only when NCCL has enqueued everything and the stream is idle",
          "[watchdog][nccl]") {
  CHECK(nccl_wait_state(ncclSuccess, cudaSuccess) == NcclWaitState::done);
  CHECK(nccl_wait_state(ncclSuccess, cudaErrorNotReady) == NcclWaitState::pending);
  // Still enqueuing: an idle stream means only that the kernels are not launched yet.
  CHECK(nccl_wait_state(ncclInProgress, cudaSuccess) == NcclWaitState::pending);
  CHECK(nccl_wait_state(ncclInProgress, cudaErrorNotReady) == NcclWaitState::pending);
}

TEST_CASE("an NCCL or stream error ends the wait as a failure", "[watchdog][nccl]") {
  CHECK(nccl_wait_state(ncclSystemError, cudaSuccess) == NcclWaitState::nccl_failed);
  CHECK(nccl_wait_state(ncclRemoteError, cudaErrorNotReady) == NcclWaitState::nccl_failed);
  CHECK(nccl_wait_state(ncclSuccess, cudaErrorLaunchFailure) == NcclWaitState::cuda_failed);
  CHECK(nccl_wait_state(ncclSuccess, cudaErrorIllegalAddress) == NcclWaitState::cuda_failed);
}
