// Parameters of the experts one rank hosts. Each parameter kind is stored contiguously for all
// local experts ([num_local, rows, cols]) so a shard or its gradient is a handful of flat arrays.
#pragma once

#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "experts/activation.hpp"
#include "experts/bf16.hpp"

namespace moe::experts {

struct ExpertShape {
  std::int64_t d_model = 0;   // d
  std::int64_t d_hidden = 0;  // h
  Activation activation = Activation::gelu;
};

// Parameter names of one expert, SPEC.md section 2 (without the "experts.{e}." prefix).
// Order: w1.weight, w1.bias, w2.weight, w2.bias for FFN activations; w1.weight, w2.weight,
// w3.weight for swiglu.
std::vector<std::string_view> expert_param_names(Activation activation);

class ExpertShard {
 public:
  ExpertShard() = default;
  // Zero-initialised parameters for `num_local_experts` experts.
  ExpertShard(std::int64_t num_local_experts, ExpertShape shape);

  std::int64_t num_experts() const { return num_experts_; }
  const ExpertShape& shape() const { return shape_; }

  // Row-major views of local expert e's parameters. b1/b2 are empty for swiglu, w3 otherwise.
  std::span<float> w1(std::int64_t e);  // [h, d]
  std::span<float> b1(std::int64_t e);  // [h]
  std::span<float> w2(std::int64_t e);  // [d, h]
  std::span<float> b2(std::int64_t e);  // [d]
  std::span<float> w3(std::int64_t e);  // [h, d]
  std::span<const float> w1(std::int64_t e) const;
  std::span<const float> b1(std::int64_t e) const;
  std::span<const float> w2(std::int64_t e) const;
  std::span<const float> b2(std::int64_t e) const;
  std::span<const float> w3(std::int64_t e) const;

  // By SPEC name ("w1.weight", "w2.bias", ...); throws std::invalid_argument for a name this
  // activation does not have.
  std::span<float> param(std::int64_t e, std::string_view name);
  std::span<const float> param(std::int64_t e, std::string_view name) const;
  std::vector<std::int64_t> param_shape(std::string_view name) const;

  void set_zero();

  // Counts changes of the parameters: every mutable view handed out above (w1(e), param(),
  // set_zero()) counts as one, since the caller may write through it. A caller that keeps a
  // mutable span and writes through it later calls mark_changed() after writing.
  std::uint64_t version() const { return version_; }
  void mark_changed() { ++version_; }

  // bf16 copies of the weights for Compute::bf16 (row-major like the fp32 ones; empty w3 without
  // swiglu). refresh_bf16() remakes them when version() moved on since the last refresh (the
  // first call allocates them); it is cheap when they are current and safe to call from several
  // threads. The views are valid until the next refresh that finds a change.
  void refresh_bf16() const;
  std::span<const bf16> w1_bf16(std::int64_t e) const;
  std::span<const bf16> w2_bf16(std::int64_t e) const;
  std::span<const bf16> w3_bf16(std::int64_t e) const;

 private:
  struct Bf16Weights {
    bool current = false;
    std::uint64_t version = 0;
    std::vector<bf16> w1, w2, w3;
  };

  std::int64_t num_experts_ = 0;
  ExpertShape shape_;
  std::vector<float> w1_, b1_, w2_, b2_, w3_;
  std::uint64_t version_ = 0;
  mutable Bf16Weights bf16_;  // made by refresh_bf16(), under a process-wide mutex
};

}  // namespace moe::experts
