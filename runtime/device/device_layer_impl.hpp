// The definitions of DeviceLayer (runtime/device/device_layer.hpp), included only by the files
// that instantiate it for a backend (host_device_layer.cpp, cuda_device_layer.cpp).
#pragma once

#include <algorithm>
#include <new>
#include <stdexcept>

#include "runtime/auto_chunks.hpp"
#include "runtime/device/device_layer.hpp"
#include "runtime/device/expert_row_map.hpp"
#include "runtime/device/permute_ops.hpp"
#include "runtime/device/router_ops.hpp"
#include "runtime/error.hpp"
#include "runtime/local_failure.hpp"

namespace moe::device {
namespace layer_detail {

// The backend's timing marks in the forward that overlap_chunks = auto times (run_pipeline, one
// chunk); the empty exchanges at construction reuse the first two.
enum Mark : int { packed_mark, dispatch_start, dispatch_end, experts_start, experts_end, return_start,
                  return_end, num_marks };

template <class Buffer>
std::byte* bytes(const Buffer& b) {
  return reinterpret_cast<std::byte*>(b.data());
}

// A wire buffer's rows as the wire format's values.
template <class Wire, class Buffer>
Wire* wire(const Buffer& b) {
  return reinterpret_cast<Wire*>(b.data());
}

template <class T>
void grow(std::vector<T>& v, std::int64_t n) {
  if (static_cast<std::int64_t>(v.size()) < n) v.resize(static_cast<std::size_t>(n));
}

template <class Backend>
void shape(FfnParams<Backend>& p, std::int64_t num_experts, std::int64_t d, std::int64_t h,
           experts::Activation activation) {
  p.num_experts = num_experts;
  p.d = d;
  p.h = h;
  p.activation = activation;
  p.reserve();
}

template <class Backend>
void upload(Backend& backend, const experts::ExpertShard& host, FfnParams<Backend>& p) {
  const std::int64_t d = p.d, h = p.h;
  for (std::int64_t e = 0; e < p.num_experts; ++e) {
    backend.upload(host.w1(e), p.w1.data() + e * h * d);
    backend.upload(host.w2(e), p.w2.data() + e * d * h);
    if (p.gated()) {
      backend.upload(host.w3(e), p.w3.data() + e * h * d);
    } else {
      backend.upload(host.b1(e), p.b1.data() + e * h);
      backend.upload(host.b2(e), p.b2.data() + e * d);
    }
  }
}

template <class Backend>
void download(Backend& backend, const FfnParams<Backend>& p, experts::ExpertShard& host) {
  const std::int64_t d = p.d, h = p.h;
  for (std::int64_t e = 0; e < p.num_experts; ++e) {
    backend.download(static_cast<const float*>(p.w1.data() + e * h * d), host.w1(e));
    backend.download(static_cast<const float*>(p.w2.data() + e * d * h), host.w2(e));
    if (p.gated()) {
      backend.download(static_cast<const float*>(p.w3.data() + e * h * d), host.w3(e));
    } else {
      backend.download(static_cast<const float*>(p.b1.data() + e * h), host.b1(e));
      backend.download(static_cast<const float*>(p.b2.data() + e * d), host.b2(e));
    }
  }
}

template <class Backend>
void zero(Backend& backend, FfnParams<Backend>& p) {
  const std::int64_t n = p.num_experts, d = p.d, h = p.h;
  backend.zero(p.w1.data(), n * h * d);
  backend.zero(p.w2.data(), n * d * h);
  if (p.gated()) {
    backend.zero(p.w3.data(), n * h * d);
  } else {
    backend.zero(p.b1.data(), n * h);
    backend.zero(p.b2.data(), n * d);
  }
}

}  // namespace layer_detail

template <LayerBackend Backend>
DeviceLayer<Backend>::DeviceLayer(const MoeConfig& config, comm::Communicator& control, Backend& backend)
    : config_(config), control_(control), backend_(backend), rank_(control.rank()), size_(control.size()) {
  collectively(control_, [&] {
    config_.validate();
    if (auto problem = device_layer_problem(config_); !problem.empty()) throw Error("the device layer " + problem);
  });
  agree_on_config(control_, config_);
  const std::int64_t num_experts = config_.num_experts, d = config_.d_model;
  gate_.reserve(num_experts * d);
  gate_grad_.reserve(num_experts * d);
  bias_.reserve(num_experts);
  group_counts_.reserve(num_experts);
  prob_sum_.reserve(num_experts);
  lse_sq_.reserve(1);
  const std::int64_t local = num_experts_of(rank_, num_experts, size_);
  const std::int64_t shared = config_.has_shared_expert() ? 1 : 0;
  for (auto* p : {&experts_, &expert_grads_}) layer_detail::shape(*p, local, d, config_.d_hidden, config_.activation);
  for (auto* p : {&shared_, &shared_grads_}) layer_detail::shape(*p, shared, d, config_.d_shared_hidden, config_.activation);
  // With auto, the first forward runs one chunk and times it; the count chosen applies next.
  auto_pending_ = config_.overlap_chunks == 0;
  chunks_ = auto_pending_ ? 1 : static_cast<int>(config_.overlap_chunks);
  backend_.reserve_chunks(chunks_);
  load(zero_parameters(config_, rank_, size_));
  zero_grad();
  if (auto_pending_) measure_empty_exchange();
}

// overlap_chunks = auto: the fixed cost λ of one exchange, which every extra chunk pays twice.
// Timed on the compute lane from before the empty exchange to the compute's resuming after its
// arrival, as a chunk adds it to the pipeline (on a GPU NCCL posts nothing for an empty exchange,
// so the communication stream alone would see no time). The best of a few, the slowest rank's:
// the same on every rank.
template <LayerBackend Backend>
void DeviceLayer<Backend>::measure_empty_exchange() {
  using layer_detail::Mark;
  backend_.reserve_marks(Mark::num_marks);
  backend_.synchronize();  // the parameters' copies are not part of it
  DispatchPlan empty;
  empty.ep_size = size_;
  empty.send_offsets.assign(static_cast<std::size_t>(size_) + 1, 0);
  empty.recv_offsets.assign(static_cast<std::size_t>(size_) + 1, 0);
  double best = 1e30;
  for (int i = 0; i < 5; ++i) {
    backend_.mark(Lane::compute, Mark::packed_mark);
    backend_.packed(0);
    backend_.dispatch(empty, 0, nullptr, nullptr, row_bytes());
    backend_.await_arrival(0);
    backend_.mark(Lane::compute, Mark::dispatch_start);
    best = std::min(best, backend_.seconds(Mark::packed_mark, Mark::dispatch_start));
  }
  control_.allreduce(std::span<double>(&best, 1), comm::ReduceOp::max);
  empty_exchange_seconds_ = best;
}

template <LayerBackend Backend>
void DeviceLayer<Backend>::load(const LayerParameters& host) {
  backend_.upload(std::span<const float>(host.gate_weight), gate_.data());
  backend_.upload(std::span<const float>(host.selection_bias), bias_.data());
  layer_detail::upload(backend_, host.experts, experts_);
  layer_detail::upload(backend_, host.shared_expert, shared_);
}

template <LayerBackend Backend>
LayerParameters DeviceLayer<Backend>::gradients() {
  LayerParameters grads = zero_parameters(config_, rank_, size_);
  backend_.download(static_cast<const float*>(gate_grad_.data()), std::span<float>(grads.gate_weight));
  layer_detail::download(backend_, expert_grads_, grads.experts);
  layer_detail::download(backend_, shared_grads_, grads.shared_expert);
  return grads;
}

template <LayerBackend Backend>
std::vector<float> DeviceLayer<Backend>::selection_bias() {
  std::vector<float> bias(static_cast<std::size_t>(config_.num_experts));
  backend_.download(static_cast<const float*>(bias_.data()), std::span<float>(bias));
  return bias;
}

template <LayerBackend Backend>
void DeviceLayer<Backend>::zero_grad() {
  backend_.zero(gate_grad_.data(), config_.num_experts * config_.d_model);
  layer_detail::zero(backend_, expert_grads_);
  layer_detail::zero(backend_, shared_grads_);
}

template <LayerBackend Backend>
const ForwardResult& DeviceLayer<Backend>::forward(const float* x, std::int64_t num_tokens, float* y) {
  PhaseTimer clock(result_.stats.phase_seconds, "forward");
  std::string local_error;
  if (num_tokens < 0) {
    local_error = "forward: " + std::to_string(num_tokens) + " tokens";
    num_tokens = 0;
  }
  const std::int64_t d = config_.d_model, k = config_.top_k;
  // check_finite: MoeLayer's checks, in its order (the input, then the routing weights its
  // Dispatcher checks), so a bad value gives the same error on either path.
  if (local_error.empty() && config_.check_finite) local_error = first_non_finite_row("input", x, num_tokens, d);
  if (local_error.empty()) local_error = failure_of([&] { route(x, num_tokens); });
  if (local_error.empty() && config_.check_finite) {
    local_error = first_non_finite("routing weights",
                                   std::span<const float>(routing_.weight).first(static_cast<std::size_t>(num_tokens * k)), k);
  }
  const std::string late_error = plan_dispatch(num_tokens, local_error);
  clock.lap(Phase::route);

  // The receive side's sizes are known only now: a rank that cannot grow its buffers says so
  // before anyone enters the payload exchange.
  agree_on_errors(control_, late_error.empty() ? failure_of([&] {
    reserve_rows();
    upload_plan();
  }) : late_error);
  const std::int64_t tokens = plan_.num_tokens;
  with_wire([&]<class W>(std::type_identity<W>) {
    backend_.launch(plan_.num_send_rows() * d, GatherRowsOp<W>{.width = d, .send_token = send_token_.data(),
                                                               .x = x, .send = layer_detail::wire<W>(send_)});
  });
  clock.lap(Phase::permute);

  shared_offsets_ = {0, tokens};
  const auto shared_forward = [&] {
    if (config_.has_shared_expert()) {
      ffn_forward(backend_, groups_, shared_, x, shared_offsets_, shared_out_.data(),
                  shared_saved_.at(0, shared_.h));
    }
  };
  run_pipeline(layer_detail::bytes(send_), layer_detail::bytes(returned_), [&](int c) { expert_forward(c); }, shared_forward,
               auto_pending_);
  clock.lap(Phase::experts);
  with_wire([&]<class W>(std::type_identity<W>) {
    backend_.launch(tokens * d, CombineRowsOp<W>{.width = d, .top_k = k, .send_row = send_row_.data(),
                                                 .weight = weight_.data(),
                                                 .back = layer_detail::wire<W>(returned_), .y = y});
  });
  if (config_.has_shared_expert()) backend_.launch(tokens * d, AddRowsOp{.src = shared_out_.data(), .dst = y});
  backend_.synchronize();
  clock.lap(Phase::combine);
  reduce_statistics();
  forwarded_ = true;
  return result_;
}

template <LayerBackend Backend>
void DeviceLayer<Backend>::route(const float* x, std::int64_t num_tokens) {
  const std::int64_t num_experts = config_.num_experts, k = config_.top_k, d = config_.d_model;
  for (auto* b : {&logits_, &scores_, &selection_}) b->reserve(num_tokens * num_experts);
  group_score_.reserve(num_tokens * config_.n_group);
  logsumexp_.reserve(num_tokens);
  score_sum_.reserve(num_tokens);
  weight_.reserve(num_tokens * k);
  expert_.reserve(num_tokens * k);
  if (num_tokens > 0) {
    const experts::GemmGroup logits{.a = x, .lda = d, .b = gate_.data(), .ldb = d, .c = logits_.data(),
                                    .ldc = num_experts, .m = num_tokens, .n = num_experts, .k = d};
    backend_.gemm(experts::Op::none, experts::Op::transpose, 1.0f, 0.0f, std::span(&logits, 1));
  }
  const bool sigmoid = config_.gate == GateKind::sigmoid;
  backend_.launch(num_tokens, RouteTokenOp{
      .dims = router_dims(config_), .logits = logits_.data(), .bias = bias_.data(),
      .scores = scores_.data(), .selection = selection_.data(), .group_score = group_score_.data(),
      .logsumexp = logsumexp_.data(), .score_sum = score_sum_.data(), .expert = expert_.data(),
      .weight = weight_.data()});
  backend_.launch(num_experts, ProbSumOp{.num_tokens = num_tokens, .num_experts = num_experts,
                                         .sigmoid = sigmoid, .scores = scores_.data(),
                                         .score_sum = score_sum_.data(), .prob_sum = prob_sum_.data()});
  backend_.launch(1, LogsumexpSquareSumOp{.num_tokens = num_tokens, .logsumexp = logsumexp_.data(),
                                          .sum = lse_sq_.data()});
  // The plan is built on the host from the choices.
  RouterOutput& r = routing_;
  r.num_tokens = num_tokens;
  layer_detail::grow(r.expert, num_tokens * k);
  layer_detail::grow(r.weight, num_tokens * k);
  r.prob_sum.resize(static_cast<std::size_t>(num_experts));
  const auto first = static_cast<std::size_t>(num_tokens * k);
  backend_.download(static_cast<const std::int32_t*>(expert_.data()), std::span(r.expert).first(first));
  backend_.download(static_cast<const float*>(weight_.data()), std::span(r.weight).first(first));
  backend_.download(static_cast<const double*>(prob_sum_.data()), std::span(r.prob_sum));
  backend_.download(static_cast<const double*>(lse_sq_.data()), std::span(&r.logsumexp_sq_sum, 1));
}

template <LayerBackend Backend>
std::string DeviceLayer<Backend>::plan_dispatch(std::int64_t num_tokens, std::string local_error) {
  // A rank with an error plans an empty batch: its routing may be partial.
  if (!local_error.empty()) num_tokens = 0;
  const auto assignments = static_cast<std::size_t>(num_tokens * config_.top_k);
  const Routing routing{.num_tokens = num_tokens,
                        .experts = std::span<const std::int32_t>(routing_.expert).first(assignments),
                        .weights = std::span<const float>(routing_.weight).first(assignments)};
  return agreement_.agree(control_, config_, chunks_, routing,
                          std::move(local_error), plan_, result_.stats.count_exchange_seconds);
}

template <LayerBackend Backend>
std::string DeviceLayer<Backend>::first_non_finite_row(const char* name, const float* rows, std::int64_t n,
                                                       std::int64_t width) {
  std::string found;
  const std::string failed = failure_of([&] {
    non_finite_.reserve(n);
    layer_detail::grow(non_finite_host_, n);
    backend_.launch(n, FirstNonFiniteOp{.width = width, .rows = rows, .column = non_finite_.data()});
    const auto columns = std::span(non_finite_host_).first(static_cast<std::size_t>(n));
    backend_.download(static_cast<const std::int64_t*>(non_finite_.data()), columns);
    const auto row = std::find_if(columns.begin(), columns.end(), [](std::int64_t c) { return c >= 0; });
    if (row == columns.end()) return;
    // Only the failing value itself comes over, to say whether it is NaN or infinite.
    const std::int64_t r = row - columns.begin();
    float value = 0;
    backend_.download(rows + r * width + *row, std::span<float>(&value, 1));
    found = non_finite_message(name, r, *row, value);
  });
  return failed.empty() ? found : failed;
}

template <LayerBackend Backend>
void DeviceLayer<Backend>::reserve_rows() {
  const std::int64_t d = config_.d_model, h = config_.d_hidden, hs = config_.d_shared_hidden;
  const std::int64_t tokens = plan_.num_tokens, sent = plan_.num_send_rows(), received = plan_.num_recv_rows();
  const bool gated = experts::is_gated(config_.activation);
  const auto wire_row = static_cast<std::int64_t>(row_bytes());
  for (auto* b : {&send_, &returned_}) b->reserve(sent * wire_row);
  recv_.reserve(received * wire_row);
  for (auto* b : {&expert_in_, &expert_out_, &expert_grad_}) b->reserve(received * d);
  saved_.reserve(received, h, gated);
  scratch_.reserve(received, h, gated);
  send_token_.reserve(sent);
  send_row_.reserve(tokens * config_.top_k);
  expert_row_.reserve(received);
  d_weight_.reserve(tokens * config_.top_k);
  d_logits_.reserve(tokens * config_.num_experts);
  if (config_.has_shared_expert()) {
    shared_saved_.reserve(tokens, hs, gated);
    scratch_.reserve(tokens, hs, gated);
    shared_out_.reserve(tokens * d);
  }
}

template <LayerBackend Backend>
void DeviceLayer<Backend>::upload_plan() {
  const std::int64_t received = plan_.num_recv_rows();
  backend_.upload(std::span<const std::int64_t>(plan_.send_token).first(static_cast<std::size_t>(plan_.num_send_rows())),
                  send_token_.data());
  backend_.upload(std::span<const std::int64_t>(plan_.send_row).first(static_cast<std::size_t>(plan_.num_tokens * plan_.top_k)),
                  send_row_.data());
  layer_detail::grow(expert_row_host_, received);
  for (int c = 0; c < plan_.num_chunks; ++c) {
    expert_row_map(plan_, c, std::span(expert_row_host_).subspan(static_cast<std::size_t>(plan_.chunk_recv_begin(c)),
                                                                 static_cast<std::size_t>(plan_.chunk_recv_rows(c))));
  }
  backend_.upload(std::span<const std::int64_t>(expert_row_host_).first(static_cast<std::size_t>(received)),
                  expert_row_.data());
}

// Chunk c's exchange waits only for the packing (every chunk is packed before the first leaves),
// its experts only for its arrival; while chunk c+1 travels, chunk c computes. Every rank makes
// the same sequence of exchanges: out 0, out 1, back 0, out 2, back 1, ...
// `timed` (the one-chunk forward overlap_chunks = auto decides from) sets the backend's marks
// around each exchange and the experts; see timed_seconds.
template <LayerBackend Backend>
template <class Work, class InFlight>
void DeviceLayer<Backend>::run_pipeline(std::byte* send, std::byte* back, Work&& work, InFlight&& in_flight,
                                        bool timed) {
  using layer_detail::Mark;
  const auto mark = [&](Lane lane, Mark m) {
    if (timed) backend_.mark(lane, m);
  };
  const int chunks = plan_.num_chunks;
  std::byte* recv = layer_detail::bytes(recv_);
  for (int c = 0; c < chunks; ++c) backend_.packed(c);
  mark(Lane::compute, Mark::packed_mark);
  in_flight();
  mark(Lane::comm, Mark::dispatch_start);
  backend_.dispatch(plan_, 0, send, recv, row_bytes());
  mark(Lane::comm, Mark::dispatch_end);
  for (int c = 0; c < chunks; ++c) {
    backend_.await_arrival(c);
    mark(Lane::compute, Mark::experts_start);
    work(c);
    backend_.packed(c);
    mark(Lane::compute, Mark::experts_end);
    if (c + 1 < chunks) backend_.dispatch(plan_, c + 1, send, recv, row_bytes());
    mark(Lane::comm, Mark::return_start);
    backend_.combine(plan_, c, recv, back, row_bytes());
    mark(Lane::comm, Mark::return_end);
  }
}

// The timed forward's seconds from its marks. An exchange starts once its rows are packed and its
// lane reaches it, so it is timed from the later of those two marks: on a GPU the packing
// finishes after the host enqueued the exchange; on the host, the in-flight work runs between
// them. The experts start once their rows arrived (the wait is before the mark).
template <LayerBackend Backend>
ChunkTimings DeviceLayer<Backend>::timed_seconds() {
  using layer_detail::Mark;
  const auto from_later = [&](Mark packed, Mark lane, Mark end) {
    return std::min(backend_.seconds(packed, end), backend_.seconds(lane, end));
  };
  const double dispatch = from_later(Mark::packed_mark, Mark::dispatch_start, Mark::dispatch_end);
  const double back = from_later(Mark::experts_end, Mark::return_start, Mark::return_end);
  return {.exchange = dispatch + back, .dispatch = dispatch, .back = back,
          .experts = backend_.seconds(Mark::experts_start, Mark::experts_end)};
}

template <LayerBackend Backend>
void DeviceLayer<Backend>::expert_forward(int c) {
  const std::int64_t d = config_.d_model, first = plan_.chunk_recv_begin(c), count = plan_.chunk_recv_rows(c);
  const std::int64_t* expert_row = expert_row_.data() + first;
  with_wire([&]<class W>(std::type_identity<W>) {
    backend_.launch(count * d, ToExpertOrderOp<W>{.width = d, .expert_row = expert_row,
                                                  .received = layer_detail::wire<W>(recv_) + first * d,
                                                  .expert = expert_in_.data()});
  });
  ffn_forward(backend_, groups_, experts_, expert_in_.data() + first * d, chunk_offsets(c),
              expert_out_.data() + first * d, saved_.at(first, experts_.h));
  with_wire([&]<class W>(std::type_identity<W>) {
    backend_.launch(count * d, FromExpertOrderOp<W>{.width = d, .expert_row = expert_row,
                                                    .expert = expert_out_.data(),
                                                    .received = layer_detail::wire<W>(recv_) + first * d});
  });
}

template <LayerBackend Backend>
void DeviceLayer<Backend>::expert_backward(int c) {
  const std::int64_t d = config_.d_model, first = plan_.chunk_recv_begin(c), count = plan_.chunk_recv_rows(c);
  const std::int64_t* expert_row = expert_row_.data() + first;
  with_wire([&]<class W>(std::type_identity<W>) {
    backend_.launch(count * d, ToExpertOrderOp<W>{.width = d, .expert_row = expert_row,
                                                  .received = layer_detail::wire<W>(recv_) + first * d,
                                                  .expert = expert_grad_.data()});
  });
  ffn_backward(backend_, groups_, experts_, expert_in_.data() + first * d, chunk_offsets(c),
               saved_.at(first, experts_.h), expert_grad_.data() + first * d,
               expert_out_.data() + first * d, expert_grads_, scratch_.at(first, experts_.h));
  with_wire([&]<class W>(std::type_identity<W>) {
    backend_.launch(count * d, FromExpertOrderOp<W>{.width = d, .expert_row = expert_row,
                                                    .expert = expert_out_.data(),
                                                    .received = layer_detail::wire<W>(recv_) + first * d});
  });
}

template <LayerBackend Backend>
void DeviceLayer<Backend>::backward(const float* x, const float* dy, float* dx, double grad_aux, double grad_z) {
  if (!forwarded_) throw std::logic_error("moe-ep: DeviceLayer::backward before any forward");
  const std::int64_t d = config_.d_model, k = config_.top_k, tokens = plan_.num_tokens;
  const std::int64_t num_experts = config_.num_experts;
  // As MoeLayer's backward: a non-finite output gradient on any rank is every rank's error.
  if (config_.check_finite) agree_on_errors(control_, first_non_finite_row("grad_output", dy, tokens, d));
  PhaseTimer clock(backward_seconds_, "backward");
  // Combine backward: the gradient of each kept row (send order) and of each weight.
  with_wire([&]<class W>(std::type_identity<W>) {
    W* const send = layer_detail::wire<W>(send_);
    backend_.launch(tokens * k * d, CombineRowsBackwardOp<W>{.width = d, .top_k = k, .send_row = send_row_.data(),
                                                             .weight = weight_.data(), .dy = dy, .d_out = send});
    // The padded exchange sends the padding rows too, and they must carry zeros: the forward's
    // gather wrote zeros there, but an earlier backward's return left its input gradients.
    if (plan_.padded_slots >= 0) {
      backend_.launch(plan_.num_send_rows() * d, ZeroPaddingRowsOp<W>{.width = d, .send_token = send_token_.data(),
                                                                      .send = send});
    }
    backend_.launch(tokens * k, CombineWeightGradOp<W>{.width = d, .top_k = k, .send_row = send_row_.data(),
                                                       .dy = dy, .back = layer_detail::wire<W>(returned_),
                                                       .d_weight = d_weight_.data()});
  });
  clock.lap(Phase::combine);
  const auto shared_backward = [&] {
    if (config_.has_shared_expert()) {
      ffn_backward(backend_, groups_, shared_, x, shared_offsets_, shared_saved_.at(0, shared_.h), dy,
                   shared_out_.data(), shared_grads_, scratch_.at(0, shared_.h));
    }
  };
  // The gradients travel the dispatch route and come back into the send buffer: chunk c's return
  // lands where chunk c's dispatch already left.
  run_pipeline(layer_detail::bytes(send_), layer_detail::bytes(send_), [&](int c) { expert_backward(c); },
               shared_backward, false);
  clock.lap(Phase::experts);
  with_wire([&]<class W>(std::type_identity<W>) {
    backend_.launch(tokens * d, GatherRowsBackwardOp<W>{.width = d, .top_k = k, .send_row = send_row_.data(),
                                                        .d_send = layer_detail::wire<W>(send_), .dx = dx});
  });
  if (config_.has_shared_expert()) backend_.launch(tokens * d, AddRowsOp{.src = shared_out_.data(), .dst = dx});
  clock.lap(Phase::permute);

  if (tokens > 0) {
    const double total = static_cast<double>(result_.stats.total_tokens);
    backend_.upload(std::span<const std::int64_t>(result_.stats.expert_counts), group_counts_.data());
    backend_.launch(tokens, RouteBackwardTokenOp{
        .dims = router_dims(config_),
        .aux_scale = grad_aux * config_.aux_loss_coef * static_cast<double>(num_experts) /
                     (total * total * static_cast<double>(k)),
        .z_scale = grad_z * config_.z_loss_coef * 2.0 / total,
        .expert_counts = group_counts_.data(), .scores = scores_.data(), .logits = logits_.data(),
        .score_sum = score_sum_.data(), .logsumexp = logsumexp_.data(), .expert = expert_.data(),
        .d_weight = d_weight_.data(), .d_logits = d_logits_.data()});
    using experts::Op;
    const experts::GemmGroup to_input{.a = d_logits_.data(), .lda = num_experts, .b = gate_.data(), .ldb = d,
                                      .c = dx, .ldc = d, .m = tokens, .n = d, .k = num_experts};
    backend_.gemm(Op::none, Op::none, 1.0f, 1.0f, std::span(&to_input, 1));
    const experts::GemmGroup to_gate{.a = d_logits_.data(), .lda = num_experts, .b = x, .ldb = d,
                                     .c = gate_grad_.data(), .ldc = d, .m = num_experts, .n = d, .k = tokens};
    backend_.gemm(Op::transpose, Op::none, 1.0f, 1.0f, std::span(&to_gate, 1));
  }
  backend_.synchronize();
  clock.lap(Phase::route);
}

template <LayerBackend Backend>
void DeviceLayer<Backend>::update_selection_bias() {
  if (config_.bias_update_rate == 0) return;
  backend_.upload(std::span<const std::int64_t>(result_.stats.expert_counts), group_counts_.data());
  backend_.launch(config_.num_experts, SelectionBiasUpdateOp{.num_experts = config_.num_experts,
                                                             .rate = config_.bias_update_rate,
                                                             .counts = group_counts_.data(),
                                                             .bias = bias_.data()});
  backend_.synchronize();
}

// The statistics as the Dispatcher gathers them (runtime/plan_statistics.hpp), carrying the
// router's partial sums: the losses and counts are bitwise identical on every rank and every run
// (SPEC.md sections 7, 9 and 10).
template <LayerBackend Backend>
void DeviceLayer<Backend>::reduce_statistics() {
  const std::int64_t num_experts = config_.num_experts;
  // The group sums: prob_sum [E], then the squared log-sum-exps.
  group_sums_.resize(static_cast<std::size_t>(num_experts + 1));
  std::copy(routing_.prob_sum.begin(), routing_.prob_sum.end(), group_sums_.begin());
  group_sums_.back() = routing_.logsumexp_sq_sum;
  // One level of exchange: no node boundary is drawn, so no inter-node traffic is counted.
  const RankTraffic mine{.wire_row_bytes = static_cast<std::int64_t>(row_bytes()), .internode = {},
                         .timings = auto_pending_ ? timed_seconds() : ChunkTimings{}};
  ForwardStats& stats = result_.stats;
  const std::span<const ChunkTimings> ranks = statistics_.gather(control_, plan_, mine, group_sums_, stats);
  set_losses(group_sums_.back());

  if (auto_pending_) {
    // Every rank decides from the same gathered numbers, so all choose the same count.
    auto_pending_ = false;
    std::int64_t kept = 0;
    for (auto n : stats.expert_kept) kept += n;
    // The marks time each exchange on its own lane: transfers, not waits for the other one.
    chunks_ = choose_auto_chunks({.ranks = ranks, .exchanges_timed_apart = true,
                                  .empty_exchange_seconds = empty_exchange_seconds_, .kept_rows = kept,
                                  .num_experts = num_experts, .group_size = size_});
    backend_.reserve_chunks(chunks_);  // the ordering events of every chunk, before the next plan
  }
}

// SPEC.md section 7, from the group's sums; both losses are 0 for an empty group.
template <LayerBackend Backend>
void DeviceLayer<Backend>::set_losses(double lse_sq_total) {
  const ForwardStats& stats = result_.stats;
  result_.aux_loss = result_.z_loss = 0;
  if (stats.total_tokens == 0) return;
  const double total = static_cast<double>(stats.total_tokens);
  double balance = 0;
  for (std::size_t e = 0; e < stats.expert_counts.size(); ++e) {
    const double f = static_cast<double>(stats.expert_counts[e]) / (total * static_cast<double>(config_.top_k));
    balance += f * (group_sums_[e] / total);
  }
  result_.aux_loss = config_.aux_loss_coef * static_cast<double>(config_.num_experts) * balance;
  result_.z_loss = config_.z_loss_coef * lse_sq_total / total;
}

}  // namespace moe::device
