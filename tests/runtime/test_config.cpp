#include <catch2/catch.hpp>

#include "runtime/config.hpp"
#include "runtime/error.hpp"

using namespace moe;

namespace {
MoeConfig valid() {
  MoeConfig c;
  c.num_experts = 8;
  c.d_model = 16;
  c.d_hidden = 32;
  return c;
}
}  // namespace

TEST_CASE("defaults are those of SPEC.md", "[config]") {
  const MoeConfig c;
  CHECK(c.top_k == 2);
  CHECK(c.capacity_factor == 1.25);
  CHECK(c.min_capacity == 4);
  CHECK(c.drop_policy == DropPolicy::position);
  CHECK(c.activation == experts::Activation::gelu);
  CHECK_FALSE(c.normalize_topk);
  CHECK(c.aux_loss_coef == 0.01);
  CHECK(c.z_loss_coef == 0.0);
}

TEST_CASE("validation names the option and the rule", "[config]") {
  MoeConfig c = valid();
  CHECK_NOTHROW(c.validate(4));
  CHECK_THROWS_WITH(c.validate(3),
                    "num_experts=8 is not divisible by the expert-parallel size 3");
  c.top_k = 0;
  CHECK_THROWS_WITH(c.validate(1), "top_k=0 is outside 1..num_experts (8)");
  c = valid();
  c.top_k = 9;
  CHECK_THROWS_WITH(c.validate(1), "top_k=9 is outside 1..num_experts (8)");
  c = valid();
  c.d_model = 0;
  CHECK_THROWS_WITH(c.validate(1), "d_model must be at least 1, got 0");
  c = valid();
  c.d_hidden = -3;
  CHECK_THROWS_WITH(c.validate(1), "d_hidden must be at least 1, got -3");
  c = valid();
  c.num_experts = 0;
  CHECK_THROWS_WITH(c.validate(1), "num_experts must be at least 1, got 0");
  c = valid();
  c.min_capacity = -1;
  CHECK_THROWS_WITH(c.validate(1), "min_capacity must be >= 0, got -1");
  c = valid();
  c.aux_loss_coef = -0.5;
  CHECK_THROWS_WITH(c.validate(1), Catch::Contains("aux_loss_coef must be finite and >= 0"));
  c = valid();
  c.capacity_factor = std::numeric_limits<double>::infinity();
  CHECK_THROWS_WITH(c.validate(1), Catch::Contains("capacity_factor must be finite"));
  c = valid();
  c.capacity_factor = -1;  // dropless is a legal choice
  CHECK_NOTHROW(c.validate(2));
  CHECK(c.dropless());
}

TEST_CASE("metadata round trip and strict parsing", "[config]") {
  MoeConfig c = valid();
  c.top_k = 3;
  c.capacity_factor = 0.3;
  c.min_capacity = 0;
  c.drop_policy = DropPolicy::score;
  c.activation = experts::Activation::swiglu;
  c.normalize_topk = true;
  c.aux_loss_coef = 0.125;
  c.z_loss_coef = 1e-3;
  MoeConfig back = valid();
  back.options_from_metadata(c.options_to_metadata());
  CHECK(back.top_k == 3);
  CHECK(back.capacity_factor == 0.3);
  CHECK(back.min_capacity == 0);
  CHECK(back.drop_policy == DropPolicy::score);
  CHECK(back.activation == experts::Activation::swiglu);
  CHECK(back.normalize_topk);
  CHECK(back.aux_loss_coef == 0.125);
  CHECK(back.z_loss_coef == 1e-3);

  MoeConfig d = valid();
  CHECK_THROWS_WITH(d.options_from_metadata({{"top_k", "2x"}}), "top_k: '2x' is not an integer");
  CHECK_THROWS_WITH(d.options_from_metadata({{"top_k", ""}}), "top_k: '' is not an integer");
  CHECK_THROWS_WITH(d.options_from_metadata({{"capacity_factor", "nan"}}),
                    "capacity_factor: 'nan' is not a finite number");
  CHECK_THROWS_WITH(d.options_from_metadata({{"normalize_topk", "yes"}}),
                    "normalize_topk: 'yes' is not true or false");
  CHECK_THROWS_WITH(d.options_from_metadata({{"drop_policy", "random"}}),
                    "drop_policy 'random' is not one of: position, score");
  CHECK_THROWS_WITH(d.options_from_metadata({{"activation", "tanh"}}),
                    "activation 'tanh' is not one of: gelu, gelu_tanh, relu, silu, swiglu");
  CHECK(d.top_k == 2);  // a failed parse leaves the option as it was
}
