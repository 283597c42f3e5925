// DeviceLayer on the CUDA backend (CUDA builds), and choosing the rank's GPU.
#include <cuda_runtime_api.h>

#include <string>
#include <utility>

#include "runtime/device/cuda_backend.hpp"
#include "runtime/device/device_layer_impl.hpp"
#include "runtime/device/device_session.hpp"
#include "runtime/error.hpp"

namespace moe::device {

template class DeviceLayer<CudaBackend>;

void select_cuda_device(int local_rank) {
  // Without a GPU (or a driver) the count is left untouched and an error returned.
  int count = 0;
  const cudaError_t code = cudaGetDeviceCount(&count);
  if (code != cudaSuccess || count == 0) {
    throw Error(std::string("--device cuda cannot run here: no CUDA GPU is visible (cudaGetDeviceCount: ") +
                (code == cudaSuccess ? "0 devices" : cudaGetErrorString(code)) + ")");
  }
  if (const cudaError_t set = cudaSetDevice(local_rank % count); set != cudaSuccess) {
    throw Error(std::string("--device cuda cannot run here: cudaSetDevice(") + std::to_string(local_rank % count) +
                ") failed: " + cudaGetErrorString(set));
  }
}

std::unique_ptr<DeviceSession> make_cuda_session(comm::MpiCommunicator& mpi, const MoeConfig& config,
                                                 const LayerParameters& parameters) {
  auto backend = std::make_unique<CudaBackend>(mpi);
  // The control communicator lives in the backend, which the session owns: taken before the move.
  comm::Communicator& control = backend->control();
  return std::make_unique<BackendSession<CudaBackend>>(std::move(backend), control, config, parameters);
}

}  // namespace moe::device
