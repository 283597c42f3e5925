// DeviceLayer on the host backend: the device layer's composition as the host suite runs it.
#include "runtime/device/device_layer_impl.hpp"
#include "runtime/device/host_backend.hpp"

namespace moe::device {

template class DeviceLayer<HostBackend>;

}  // namespace moe::device
