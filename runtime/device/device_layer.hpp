// The MoE layer on the device path (SPEC.md sections 3-8, the same results as MoeLayer): router,
// capacity and drops, permute, the exchange of rows, the experts' FFN, the way back and the
// combine; the backward in reverse; the selection-bias update. Written once over a LayerBackend
// (runtime/device/layer_backend.hpp): DeviceLayer<CudaBackend> runs on a GPU with NCCL,
// DeviceLayer<HostBackend> runs the same composition with the host launcher, oneDNN and MPI, and
// is what the host suite tests (tests/device/test_device_layer_mpi.cpp, moe-replay --device
// host-launcher).
//
// Where the work happens: tensors, parameters, gradients and the workspace live in the backend's
// memory space and grow to the largest batch, then are reused (no allocation on the hot path);
// the router's choices come to the host, where the dispatch plan is made and agreed by the same
// code as the Dispatcher's (runtime/plan_agreement.hpp: capacity and drops, the count exchange or
// the padded slot count, errors raised by every rank) over the host `control` communicator (on a
// GPU the NCCL communicator itself, staged through device memory by CudaBackend::control(): MPI
// only bootstraps NCCL); the plan's row maps go back to the space and the rows move over the
// backend's communicator, chunk by chunk: the packing of chunk c+1's exchange and the experts of
// chunk c are ordered only by events, so on a GPU they overlap.
//
// overlap_chunks = auto decides as the Dispatcher does (runtime/auto_chunks.hpp): λ, an empty
// exchange's cost, is measured at construction; the first forward runs one chunk and times its
// exchanges and experts with the backend's marks (on a GPU, events on the two streams: device
// times, not host clocks around asynchronous launches); the times travel in the statistics'
// allgather, so every rank chooses the same count, which applies from the next plan (chunks()).
//
// Runs the variable and padded exchanges, check_finite (the input, the routing weights and the
// output gradient, with MoeLayer's errors) and the bf16 wire: rows are rounded into bf16 where
// they enter the send or receive buffers and widened where they leave (the permute ops' Wire
// parameter, runtime/device/permute_ops.hpp), at the Dispatcher's points and with its rounding,
// so both layers exchange the same bytes. Not supported (refused at construction, on every rank):
// exchange hierarchical, bf16 compute (the experts' GEMMs run fp32). A forward's context is kept
// inside the layer: backward walks back the last forward.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "comm/communicator.hpp"
#include "runtime/auto_chunks.hpp"
#include "runtime/config.hpp"
#include "runtime/device/expert_ffn.hpp"
#include "runtime/device/layer_backend.hpp"
#include "runtime/device/layer_parameters.hpp"
#include "runtime/dispatch_plan.hpp"
#include "runtime/moe_layer.hpp"
#include "runtime/plan_agreement.hpp"
#include "runtime/plan_statistics.hpp"
#include "runtime/router.hpp"

namespace moe::device {

// The options DeviceLayer does not run, as a message ("" when it runs `config`).
std::string device_layer_problem(const MoeConfig& config);

template <LayerBackend Backend>
class DeviceLayer {
 public:
  template <class T>
  using Buffer = typename Backend::template Buffer<T>;

  // Collective over `control`: the configuration is validated (and checked against
  // device_layer_problem) on every rank, and the ranks check that they hold the same one (as the
  // Dispatcher does); a failure is the same moe::Error everywhere. `control` has the ranks of the
  // backend's communicator in the same order; both must outlive the layer.
  DeviceLayer(const MoeConfig& config, comm::Communicator& control, Backend& backend);

  const MoeConfig& config() const { return config_; }
  std::int64_t local_experts() const { return experts_.num_experts; }
  // Chunks the next plan will use: overlap_chunks, or what `auto` chose after the first forward
  // (1 until then), the same on every rank.
  int chunks() const { return chunks_; }

  // Copies the parameters to the space (shapes as zero_parameters gives).
  void load(const LayerParameters& host);
  // The gradients accumulated by backward, copied to the host: the router's (this rank's
  // contribution, in gate_weight), this rank's experts' (full), the shared expert's (this rank's
  // contribution); selection_bias stays zero (no gradient flows into it).
  LayerParameters gradients();
  // The current selection bias, copied to the host.
  std::vector<float> selection_bias();
  void zero_grad();

  // Collective. x and y are [num_tokens, d] in the backend's memory space.
  const ForwardResult& forward(const float* x, std::int64_t num_tokens, float* y);
  // Collective. The backward of the last forward (same x): writes dx, ADDS the gradients.
  void backward(const float* x, const float* dy, float* dx, double grad_aux = 1.0, double grad_z = 1.0);
  // Wall time of each phase of the last backward (the phases walked in reverse).
  const std::array<double, kNumPhases>& backward_phase_seconds() const { return backward_seconds_; }
  // The selection-bias update of SPEC.md section 3 from the last forward's group-wide counts.
  void update_selection_bias();

 private:
  void route(const float* x, std::int64_t num_tokens);
  // The plan of the routed batch, agreed on `control_` (runtime/plan_agreement.hpp); returns a
  // failure met after the agreement ("" for none).
  std::string plan_dispatch(std::int64_t num_tokens, std::string local_error);
  // check_finite: the first non-finite value of `rows` [n, width] in the space, in MoeLayer's
  // words, or "" (or what failed while looking).
  std::string first_non_finite_row(const char* name, const float* rows, std::int64_t n, std::int64_t width);
  void upload_plan();
  void reserve_rows();
  // Out, work on each chunk as it arrives, back: the chunked exchange of the pass.
  template <class Work, class InFlight>
  void run_pipeline(std::byte* send, std::byte* back, Work&& work, InFlight&& in_flight, bool timed);
  // overlap_chunks = auto: λ at construction (collective), the timed forward's seconds.
  void measure_empty_exchange();
  ChunkTimings timed_seconds();
  void expert_forward(int c);
  void expert_backward(int c);
  void reduce_statistics();
  void set_losses(double lse_sq_total);
  std::span<const std::int64_t> chunk_offsets(int c) const { return plan_.chunk_expert_offsets(c); }
  // A row in send or receive order, as it travels and as the statistics count it.
  std::size_t row_bytes() const {
    return static_cast<std::size_t>(config_.d_model) * wire_value_bytes(config_.wire_format());
  }
  // f(std::type_identity<W>{}) with W the wire format's value type (float or WireBf16): the ops
  // on rows in send and receive order are instantiated for each.
  template <class F>
  void with_wire(F&& f) const {
    if (config_.wire_format() == WireFormat::bf16) {
      f(std::type_identity<WireBf16>{});
    } else {
      f(std::type_identity<float>{});
    }
  }

  MoeConfig config_;
  comm::Communicator& control_;
  Backend& backend_;
  int rank_ = 0, size_ = 1;
  GemmGroups groups_;
  PlanAgreement agreement_;
  PlanStatistics statistics_;

  // Parameters and gradients in the space.
  Buffer<float> gate_, bias_, gate_grad_;
  FfnParams<Backend> experts_, expert_grads_, shared_, shared_grads_;

  // The last forward: the router's output in the space and its host mirror, the plan.
  Buffer<float> logits_, scores_, selection_, group_score_, logsumexp_, score_sum_, weight_;
  Buffer<std::int32_t> expert_;
  Buffer<double> prob_sum_, lse_sq_;
  Buffer<std::int64_t> group_counts_;
  RouterOutput routing_;  // expert, weight, prob_sum, logsumexp_sq_sum on the host (counts: the plan's)
  DispatchPlan plan_;
  ForwardResult result_;
  // The plan's row maps in the space: send_token [S], send_row [T*k], expert_row [R] (chunk-relative).
  Buffer<std::int64_t> send_token_, send_row_, expert_row_;
  std::vector<std::int64_t> expert_row_host_;
  // Rows: send order, receive order and the expert outputs back home in the wire format (bytes,
  // typed by with_wire); expert order (the experts' input and output) in fp32; the FFN's saved
  // activations over every received row.
  Buffer<std::byte> send_, recv_, returned_;
  Buffer<float> expert_in_, expert_out_;
  FfnRows<Backend> saved_, shared_saved_, scratch_;
  Buffer<float> shared_out_;

  // Backward's workspace.
  Buffer<float> d_weight_, d_logits_, expert_grad_;
  std::array<double, kNumPhases> backward_seconds_{};

  // check_finite: each row's first non-finite column, in the space and on the host.
  Buffer<std::int64_t> non_finite_;
  std::vector<std::int64_t> non_finite_host_;

  // Host workspace of the control path.
  std::vector<double> group_sums_;  // prob_sum [E], then the squared log-sum-exps
  bool forwarded_ = false;  // a forward has filled the context backward walks back
  int chunks_ = 1;
  bool auto_pending_ = false;  // overlap_chunks is auto and the count not yet chosen
  double empty_exchange_seconds_ = 0;
  std::array<std::int64_t, 2> shared_offsets_{};
};

}  // namespace moe::device
