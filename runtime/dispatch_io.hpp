// What a caller hands the Dispatcher (runtime/dispatcher.hpp) and what the Dispatcher hands back to
// the caller's expert code. Plain types only, so the public API can use them as they are.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <type_traits>
#include <utility>

namespace moe {

// The routing decisions of one local batch (SPEC.md section 3): choice j of token t goes to global
// expert experts[t*k + j] with combine weight weights[t*k + j]. The weights are also the ranking
// keys of drop_policy = score.
struct Routing {
  std::int64_t num_tokens = 0;
  std::span<const std::int32_t> experts;  // [T, k]
  std::span<const float> weights;         // [T, k]
};

// One batch of rows grouped by local expert, as the pipelined passes hand it to the caller's expert
// function: rows [offsets[e], offsets[e+1]) belong to local expert e (L+1 offsets, relative to
// the batch). `first_row` places the batch in the context's whole expert layout.
struct ExpertBatch {
  int chunk = 0;
  std::int64_t first_row = 0;
  std::span<const std::int64_t> offsets;
  std::span<const float> input;        // [N, d] the rows dispatched to the experts (saved, in backward)
  std::span<const float> grad_output;  // backward only: [N, d] gradient of the experts' outputs
  std::span<float> output;             // [N, d] forward: the experts' outputs; backward: input gradient
};

// A call to a function the caller owns, without copying or allocating (unlike std::function): the
// hot path hands one to the pipeline on every call. Empty when default-constructed.
template <class Signature>
class FunctionRef;

template <class R, class... Args>
class FunctionRef<R(Args...)> {
 public:
  FunctionRef() = default;
  template <class F>
    requires(!std::is_same_v<std::remove_cvref_t<F>, FunctionRef> && std::is_invocable_r_v<R, F&, Args...>)
  FunctionRef(F&& f)  // NOLINT: implicit, like std::function
      : object_(const_cast<void*>(static_cast<const void*>(std::addressof(f)))),
        call_([](void* object, Args... args) -> R {
          return (*static_cast<std::remove_reference_t<F>*>(object))(std::forward<Args>(args)...);
        }) {}

  explicit operator bool() const { return call_ != nullptr; }
  R operator()(Args... args) const { return call_(object_, std::forward<Args>(args)...); }

 private:
  void* object_ = nullptr;
  R (*call_)(void*, Args...) = nullptr;
};

// The caller's experts, called once per chunk as its rows arrive (forward) or its gradients arrive
// (backward), on the calling thread.
using ExpertFunction = FunctionRef<void(const ExpertBatch&)>;
// Work that needs no remote rows (a shared expert), run while the first chunk travels.
using InFlightWork = FunctionRef<void()>;

}  // namespace moe
