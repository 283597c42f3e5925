// --device: where a program runs the layer. `host` is MoeLayer; `cuda` the device layer
// (runtime/device/device_layer.hpp) on a GPU; `host-launcher` the same device layer on the host
// backend (the ops through the host launcher, oneDNN, MPI): the GPU path's composition, runnable
// and tested where there is no GPU.
#pragma once

#include <boost/program_options.hpp>
#include <memory>
#include <string>

#include "comm/mpi_communicator.hpp"
#include "runtime/device/device_session.hpp"

namespace moe::apps {

enum class DeviceKind { host, host_launcher, cuda };

struct DeviceOption {
  std::string text = "host";
  DeviceKind kind = DeviceKind::host;
};

void add_device_option(boost::program_options::options_description& options, DeviceOption& out);
// Parses out.text; throws UsageError for an unknown device.
void finish_device_option(DeviceOption& out);

// Collective over `comm`: the device layer on `kind` (not host) with `parameters`. When --device
// cuda cannot run here (a build without CUDA, no GPU) every rank throws the same moe::Error.
std::unique_ptr<device::DeviceSession> open_device_session(DeviceKind kind, comm::MpiCommunicator& comm,
                                                           const MoeConfig& config,
                                                           const device::LayerParameters& parameters);

}  // namespace moe::apps
