// Builds without the CUDA backend (CMake picks this file instead of cuda_device_layer.cpp).
#include <stdexcept>

#include "runtime/device/device_session.hpp"
#include "runtime/error.hpp"

namespace moe::device {

void select_cuda_device(int) {
  throw Error("--device cuda cannot run here: this build of moe-ep has no CUDA backend (nvcc or NCCL "
              "was not found when it was configured)");
}

std::unique_ptr<DeviceSession> make_cuda_session(comm::MpiCommunicator&, const MoeConfig&,
                                                 const LayerParameters&) {
  throw std::logic_error("moe-ep: make_cuda_session in a build without CUDA (select_cuda_device refuses first)");
}

}  // namespace moe::device
