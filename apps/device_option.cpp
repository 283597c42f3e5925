#include "apps/device_option.hpp"

#include "apps/mpi_program.hpp"
#include "runtime/error.hpp"

namespace moe::apps {

namespace po = boost::program_options;

void add_device_option(po::options_description& options, DeviceOption& out) {
  options.add_options()(
      "device", po::value(&out.text)->default_value(out.text),
      "where the layer runs: host (MoeLayer) | cuda (the device layer on one GPU per rank, NCCL) | "
      "host-launcher (the device layer's composition on the host: its ops through the host "
      "launcher, oneDNN, MPI)");
}

void finish_device_option(DeviceOption& out) {
  if (out.text == "host") {
    out.kind = DeviceKind::host;
  } else if (out.text == "host-launcher") {
    out.kind = DeviceKind::host_launcher;
  } else if (out.text == "cuda") {
    out.kind = DeviceKind::cuda;
  } else {
    throw UsageError("--device: '" + out.text + "' is not one of host, cuda, host-launcher");
  }
}

std::unique_ptr<device::DeviceSession> open_device_session(DeviceKind kind, comm::MpiCommunicator& comm,
                                                           const MoeConfig& config,
                                                           const device::LayerParameters& parameters) {
  if (kind == DeviceKind::host_launcher) return device::make_host_session(comm, config, parameters);
  // One GPU per rank: the rank's index among the ranks of its host picks it.
  const auto on_host = comm.split(comm.host_leader(), comm.rank());
  collectively(comm, [&] { device::select_cuda_device(on_host->rank()); });
  return device::make_cuda_session(comm, config, parameters);
}

}  // namespace moe::apps
