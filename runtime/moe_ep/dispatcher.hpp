// The Dispatcher of moe-ep's public API (<moe_ep/moe_ep.hpp>): the exchange level under the layer,
// for a trainer that routes and runs its experts itself (as with DeepEP). The caller hands in each
// token's experts and weights; the Dispatcher decides capacity and drops (SPEC.md section 4), tells
// every rank how many rows each of its local experts will receive before any row moves, delivers
// the rows grouped by local expert, and combines the experts' outputs back into token order
// (section 6). Backward runs the same plan in reverse.
//
//   moe_ep::Dispatcher dispatcher(config, *groups.ep);       // collective
//   moe_ep::DispatchContext ctx;                             // one per micro-batch in flight
//   dispatcher.plan(ctx, {num_tokens, experts, weights});    // sizes known: ctx.expert_offsets()
//   auto rows = dispatcher.dispatch(ctx, x);                 // [ctx.num_expert_rows(), d]
//   ... out[rows of local expert e] = f_e(rows of local expert e) ...
//   dispatcher.combine(ctx, out, y);                          // y[t] = Σ kept w · f_e(x_t)
//   auto grads = dispatcher.dispatch_backward(ctx, dy);      // gradient of `out`
//   ... grad_in = f_e backward ...
//   dispatcher.combine_backward(ctx, grad_in, dx, d_weight);  // dx, and d y / d weights
// or, to overlap the exchanges with the experts chunk by chunk (overlap_chunks > 1), forward() and
// backward() call the caller's expert function on each chunk as it arrives.
//
// Every call is collective over the expert-parallel group; a bad input on any rank (an expert
// index out of range, a wrong length) is the same moe::Error on every rank. After warm-up, calls
// of the same shape allocate nothing.
#pragma once

#include <cstdint>
#include <memory>
#include <span>

#include "comm/communicator.hpp"
#include "runtime/config.hpp"
#include "runtime/dispatch_io.hpp"
#include "runtime/stats.hpp"

namespace moe {
class Dispatcher;
class DispatchContext;
}  // namespace moe

namespace moe_ep {

using Config = moe::MoeConfig;
using ForwardStats = moe::ForwardStats;
// Routing{num_tokens, experts [T*k], weights [T*k]}: choice j of token t goes to global expert
// experts[t*k + j] with combine weight weights[t*k + j] (also drop_policy = score's ranking key).
using Routing = moe::Routing;
// What forward() and backward() hand the caller's expert function: a chunk's rows grouped by
// local expert (offsets), their input, and where to write the output (see runtime/dispatch_io.hpp).
using ExpertBatch = moe::ExpertBatch;
using ExpertFunction = moe::ExpertFunction;

// One micro-batch's plan and the rows it keeps for its backward.
class DispatchContext {
 public:
  DispatchContext();
  ~DispatchContext();
  DispatchContext(DispatchContext&&) noexcept;
  DispatchContext& operator=(DispatchContext&&) noexcept;

  std::int64_t num_tokens() const;
  // Whether capacity kept choice j of token t.
  bool kept(std::int64_t t, std::int64_t j) const;
  // Known after plan(), before any row moves: rows this rank's experts receive, local expert e's
  // at [expert_offsets()[e], expert_offsets()[e+1]) (local_experts()+1 entries).
  std::int64_t num_expert_rows() const;
  std::span<const std::int64_t> expert_offsets() const;
  // After dispatch() or forward(): those rows, [num_expert_rows(), d].
  std::span<const float> expert_rows() const;
  // Group-wide counts before and after dropping, drops, bytes and phase times of the last forward.
  const ForwardStats& stats() const;

 private:
  friend class Dispatcher;
  std::unique_ptr<moe::DispatchContext> impl_;
};

class Dispatcher {
 public:
  // Collective over `ep_comm` (which must outlive it). Reads num_experts, d_model, top_k, the
  // capacity options (capacity_factor, min_capacity, drop_policy, capacity_scope), exchange,
  // overlap_chunks, wire, ranks_per_node, check_finite and label; the router's, the experts' and
  // the losses' options are the caller's and are ignored (d_hidden may stay 0).
  Dispatcher(const Config& config, moe::comm::Communicator& ep_comm);
  ~Dispatcher();
  Dispatcher(Dispatcher&&) noexcept;
  Dispatcher& operator=(Dispatcher&&) noexcept;

  const Config& config() const;
  // The experts this rank owns: global experts first_expert() ... first_expert() + local_experts() - 1.
  std::int64_t local_experts() const;
  std::int64_t first_expert() const;

  // Collective. Plans one micro-batch: capacity, drops and the row counts of every rank.
  void plan(DispatchContext& ctx, const Routing& routing);

  // Collective, split forward: x [T, d] -> the rows of this rank's experts (ctx.expert_rows()).
  std::span<const float> dispatch(DispatchContext& ctx, std::span<const float> x);
  // Collective: expert_output in the layout of those rows -> y [T, d] (overwritten).
  void combine(DispatchContext& ctx, std::span<const float> expert_output, std::span<float> y);
  // Collective, split backward: dy [T, d] -> the gradient of each expert output row (valid until
  // the next call on this dispatcher).
  std::span<const float> dispatch_backward(DispatchContext& ctx, std::span<const float> dy);
  // Collective: the gradient of each expert input row -> dx [T, d] (overwritten) and d_weight
  // [T*k], the gradient of the combine weights (zero for a dropped choice), for the router.
  void combine_backward(DispatchContext& ctx, std::span<const float> grad_rows, std::span<float> dx,
                        std::span<float> d_weight);

  // Collective, pipelined: dispatch, `experts` on each chunk as it arrives (batch.input ->
  // batch.output), combine; overlapped when overlap_chunks > 1.
  void forward(DispatchContext& ctx, std::span<const float> x, std::span<float> y, ExpertFunction experts);
  // Collective, pipelined backward: `experts` gets each chunk's saved input rows and the gradient
  // of their outputs (batch.grad_output) and writes the gradient of their inputs (batch.output).
  void backward(DispatchContext& ctx, std::span<const float> dy, std::span<float> dx,
                std::span<float> d_weight, ExpertFunction experts);

 private:
  std::unique_ptr<moe::Dispatcher> impl_;
};

}  // namespace moe_ep
