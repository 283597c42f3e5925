// ExpertShard storage and SPEC.md section 2 names and shapes.
#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include "experts/expert_shard.hpp"

using namespace moe::experts;

TEST_CASE("experts/shard parameter names follow SPEC section 2", "[experts][shard]") {
  using Names = std::vector<std::string_view>;
  CHECK(expert_param_names(Activation::gelu) ==
        Names{"w1.weight", "w1.bias", "w2.weight", "w2.bias"});
  CHECK(expert_param_names(Activation::relu) == expert_param_names(Activation::gelu));
  CHECK(expert_param_names(Activation::swiglu) == Names{"w1.weight", "w2.weight", "w3.weight"});
}

TEST_CASE("experts/shard parameter shapes", "[experts][shard]") {
  using Shape = std::vector<std::int64_t>;
  const ExpertShard ffn(2, {5, 7, Activation::silu});
  CHECK(ffn.param_shape("w1.weight") == Shape{7, 5});
  CHECK(ffn.param_shape("w1.bias") == Shape{7});
  CHECK(ffn.param_shape("w2.weight") == Shape{5, 7});
  CHECK(ffn.param_shape("w2.bias") == Shape{5});
  CHECK_THROWS_AS(ffn.param_shape("w3.weight"), std::invalid_argument);
  CHECK_THROWS_AS(ffn.param_shape("gate.weight"), std::invalid_argument);

  const ExpertShard glu(1, {5, 7, Activation::swiglu});
  CHECK(glu.param_shape("w1.weight") == Shape{7, 5});
  CHECK(glu.param_shape("w2.weight") == Shape{5, 7});
  CHECK(glu.param_shape("w3.weight") == Shape{7, 5});
  CHECK_THROWS_AS(glu.param_shape("w1.bias"), std::invalid_argument);
  CHECK_THROWS_AS(glu.param(0, "w2.bias"), std::invalid_argument);
}

TEST_CASE("experts/shard storage: zeroed, contiguous per kind, named views alias it",
          "[experts][shard]") {
  const Activation a = GENERATE(Activation::gelu, Activation::swiglu);
  const std::int64_t d = 3, h = 4;
  ExpertShard s(3, {d, h, a});
  CHECK(s.num_experts() == 3);
  CHECK(s.shape().d_model == d);
  CHECK(s.shape().d_hidden == h);
  CHECK(s.shape().activation == a);
  for (std::int64_t e = 0; e < 3; ++e) {
    for (const auto name : expert_param_names(a)) {
      const auto view = s.param(e, name);
      std::int64_t elems = 1;
      for (const std::int64_t dim : s.param_shape(name)) elems *= dim;
      CHECK(static_cast<std::int64_t>(view.size()) == elems);
      for (const float v : view) CHECK(v == 0.0f);
    }
  }
  CHECK(s.param(1, "w1.weight").data() == s.w1(1).data());
  CHECK(s.param(2, "w2.weight").data() == s.w2(2).data());
  CHECK(s.w1(1).data() == s.w1(0).data() + h * d);
  CHECK(s.w2(2).data() == s.w2(0).data() + 2 * d * h);
  if (is_gated(a)) {
    CHECK(s.b1(0).empty());
    CHECK(s.b2(0).empty());
    CHECK(s.param(1, "w3.weight").data() == s.w3(1).data());
  } else {
    CHECK(s.w3(0).empty());
    CHECK(s.param(2, "w1.bias").data() == s.b1(2).data());
    CHECK(s.param(0, "w2.bias").data() == s.b2(0).data());
    CHECK(s.b2(1).data() == s.b2(0).data() + d);
  }

  s.param(2, "w2.weight")[3] = 1.5f;
  const ExpertShard& cs = s;
  CHECK(cs.w2(2)[3] == 1.5f);
  CHECK(cs.param(2, "w2.weight")[3] == 1.5f);
  CHECK(cs.w2(1)[3] == 0.0f);
  s.set_zero();
  CHECK(cs.w2(2)[3] == 0.0f);

  CHECK_THROWS_AS(s.w1(3), std::out_of_range);
  CHECK_THROWS_AS(s.w1(-1), std::out_of_range);
  CHECK_THROWS_AS(s.param(3, "w1.weight"), std::out_of_range);
}

TEST_CASE("experts/shard rejects negative sizes", "[experts][shard]") {
  CHECK_THROWS_AS(ExpertShard(-1, {4, 4, Activation::gelu}), std::invalid_argument);
  CHECK_THROWS_AS(ExpertShard(1, {4, -4, Activation::gelu}), std::invalid_argument);
  const ExpertShard empty;
  CHECK(empty.num_experts() == 0);
}
