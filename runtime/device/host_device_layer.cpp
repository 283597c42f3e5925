// DeviceLayer on the host backend: the device layer's composition as the host suite runs it.
#include "runtime/device/device_layer_impl.hpp"
#include "runtime/device/device_session.hpp"
#include "runtime/device/host_backend.hpp"

namespace moe::device {

template class DeviceLayer<HostBackend>;

std::unique_ptr<DeviceSession> make_host_session(comm::Communicator& comm, const MoeConfig& config,
                                                 const LayerParameters& parameters) {
  return std::make_unique<BackendSession<HostBackend>>(std::make_unique<HostBackend>(comm), comm, config,
                                                       parameters);
}

}  // namespace moe::device
