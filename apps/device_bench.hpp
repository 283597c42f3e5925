// moe-bench --device cuda|host-launcher: the device layer's forward and backward timed on
// synthetic data (the same parameters and inputs as the host layer's run with the same seed).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>

#include "apps/device_option.hpp"
#include "comm/mpi_communicator.hpp"
#include "runtime/config.hpp"

namespace moe::apps {

struct DeviceBenchOptions {
  DeviceOption device;
  std::int64_t tokens = 0;  // per rank
  int iters = 1, warmup = 0;
  std::uint64_t seed = 1;
  bool forward_only = false;
};

// Collective: medians (ms, slowest rank) of forward and backward over `iters` calls after
// `warmup` untimed ones, with the rows kept in the backend's memory. The JSON is valid on rank 0.
nlohmann::json measure_device(comm::MpiCommunicator& world, const MoeConfig& config, const DeviceBenchOptions& o);

// The figures as a short table (rank 0).
void print_device_table(const nlohmann::json& j);

}  // namespace moe::apps
