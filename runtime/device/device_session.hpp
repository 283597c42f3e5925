// A device layer with its rows, for programs that hold their tensors on the host (moe-replay,
// moe-bench): the backend, the layer, and the input, output and their gradients in the backend's
// memory. Rows are copied in once (set_rows) and out on request, so a timed forward or backward
// is the layer alone. The backend is chosen at run time, hence a small abstract class.
#pragma once

#include <memory>
#include <span>
#include <vector>

#include "comm/mpi_communicator.hpp"
#include "runtime/device/device_layer.hpp"
#include "runtime/device/layer_parameters.hpp"

namespace moe::device {

class DeviceSession {
 public:
  virtual ~DeviceSession() = default;
  // x and dy [T, d] (dy may be empty: forward only), copied to the backend's memory.
  virtual void set_rows(std::span<const float> x, std::span<const float> dy) = 0;
  // Collective: the layer's forward and backward on the rows set last.
  virtual const ForwardResult& forward() = 0;
  virtual void backward() = 0;
  virtual void update_selection_bias() = 0;
  virtual void zero_grad() = 0;
  // Chunks the next forward uses: overlap_chunks, or what auto chose after the first forward.
  virtual int chunks() const = 0;
  // Copied to the host.
  virtual std::vector<float> output() = 0;
  virtual std::vector<float> input_grad() = 0;
  virtual LayerParameters gradients() = 0;
  virtual std::vector<float> selection_bias() = 0;
};

// Collective over `comm`: the device layer's composition on the host backend (host launcher,
// oneDNN, `comm` for rows and counts alike).
std::unique_ptr<DeviceSession> make_host_session(comm::Communicator& comm, const MoeConfig& config,
                                                 const LayerParameters& parameters);

// Makes this rank use CUDA device local_rank mod (the devices it sees). Throws moe::Error when it
// cannot: no CUDA backend in this build, or no GPU visible. Not collective: call it through
// moe::collectively, so every rank reports alike.
void select_cuda_device(int local_rank);

// Collective over `mpi` (after select_cuda_device): the device layer on the CUDA backend. `mpi`
// only bootstraps NCCL (it carries the unique id); the rows and the layer's control traffic (the
// plan's counts, error agreement, statistics) all go over NCCL, the control traffic staged through
// device memory (CudaBackend::control()), so no MPI call happens once the session is built.
std::unique_ptr<DeviceSession> make_cuda_session(comm::MpiCommunicator& mpi, const MoeConfig& config,
                                                 const LayerParameters& parameters);

// The session of any backend (for the factories above).
template <LayerBackend Backend>
class BackendSession final : public DeviceSession {
 public:
  BackendSession(std::unique_ptr<Backend> backend, comm::Communicator& control, const MoeConfig& config,
                 const LayerParameters& parameters)
      : backend_(std::move(backend)), layer_(config, control, *backend_), d_(config.d_model) {
    layer_.load(parameters);
  }

  void set_rows(std::span<const float> x, std::span<const float> dy) override {
    tokens_ = static_cast<std::int64_t>(x.size()) / d_;
    for (auto* b : {&x_, &y_, &dy_, &dx_}) b->reserve(tokens_ * d_);
    backend_->upload(x, x_.data());
    backend_->upload(dy, dy_.data());
  }
  const ForwardResult& forward() override { return layer_.forward(x_.data(), tokens_, y_.data()); }
  void backward() override { layer_.backward(x_.data(), dy_.data(), dx_.data()); }
  void update_selection_bias() override { layer_.update_selection_bias(); }
  void zero_grad() override { layer_.zero_grad(); }
  int chunks() const override { return layer_.chunks(); }
  std::vector<float> output() override { return download(y_); }
  std::vector<float> input_grad() override { return download(dx_); }
  LayerParameters gradients() override { return layer_.gradients(); }
  std::vector<float> selection_bias() override { return layer_.selection_bias(); }

 private:
  std::vector<float> download(const typename Backend::template Buffer<float>& rows) {
    std::vector<float> host(static_cast<std::size_t>(tokens_ * d_));
    backend_->download(static_cast<const float*>(rows.data()), std::span<float>(host));
    return host;
  }

  std::unique_ptr<Backend> backend_;
  DeviceLayer<Backend> layer_;
  std::int64_t d_ = 0, tokens_ = 0;
  typename Backend::template Buffer<float> x_, y_, dy_, dx_;
};

}  // namespace moe::device
