#include <catch2/catch.hpp>

#include <cmath>
#include <numeric>

#include "runtime/router.hpp"

using namespace moe;

namespace {
MoeConfig config_for(std::int64_t experts, std::int64_t d, std::int64_t k) {
  MoeConfig c;
  c.num_experts = experts;
  c.d_model = d;
  c.d_hidden = 4;
  c.top_k = k;
  return c;
}
}  // namespace

TEST_CASE("equal scores go to the smaller expert index", "[router]") {
  const MoeConfig c = config_for(6, 3, 3);
  const std::vector<float> gate(6 * 3, 0.0f);  // every logit 0: every probability 1/6
  const std::vector<float> x = {1, 2, 3, -1, 0, 4};
  RouterOutput out;
  route(c, gate, x, 2, out);
  CHECK(std::vector<std::int32_t>(out.expert.begin(), out.expert.begin() + 6) ==
        std::vector<std::int32_t>{0, 1, 2, 0, 1, 2});
  for (int i = 0; i < 6; ++i) CHECK(out.weight[static_cast<std::size_t>(i)] == Approx(1.0 / 6));
  CHECK(out.logsumexp[0] == Approx(std::log(6.0)));
}

TEST_CASE("top-k is in descending probability with softmax weights", "[router]") {
  const MoeConfig c = config_for(4, 2, 2);
  // logits of token (1, 0) are the first column of gate: 0.5, 2, -1, 1.5
  const std::vector<float> gate = {0.5f, 0, 2, 0, -1, 0, 1.5f, 0};
  const std::vector<float> x = {1, 0};
  RouterOutput out;
  route(c, gate, x, 1, out);
  const double z[4] = {0.5, 2, -1, 1.5};
  double sum = 0;
  for (double v : z) sum += std::exp(v);
  CHECK(out.expert[0] == 1);
  CHECK(out.expert[1] == 3);
  CHECK(out.weight[0] == Approx(std::exp(2.0) / sum).epsilon(1e-6));
  CHECK(out.weight[1] == Approx(std::exp(1.5) / sum).epsilon(1e-6));
  CHECK(out.counts == std::vector<std::int64_t>{0, 1, 0, 1});
  CHECK(out.prob_sum[2] == Approx(std::exp(-1.0) / sum).epsilon(1e-6));
  CHECK(out.logsumexp_sq_sum == Approx(std::log(sum) * std::log(sum)).epsilon(1e-6));

  MoeConfig normalized = c;
  normalized.normalize_topk = true;
  route(normalized, gate, x, 1, out);
  CHECK(out.weight[0] == Approx(std::exp(2.0) / (std::exp(2.0) + std::exp(1.5))).epsilon(1e-6));
  CHECK(out.weight[0] + out.weight[1] == Approx(1.0f));
}

TEST_CASE("k = 1 with normalize_topk gives weight exactly 1; k = E selects every expert",
          "[router]") {
  MoeConfig c = config_for(5, 2, 1);
  c.normalize_topk = true;
  const std::vector<float> gate = {0.1f, 0.2f, -0.3f, 0.4f, 0.5f, -0.6f, 0.7f, 0.8f, -0.9f, 1.0f};
  const std::vector<float> x = {0.3f, -1.7f, 2.5f, 0.25f};
  RouterOutput out;
  route(c, gate, x, 2, out);
  CHECK(out.weight[0] == 1.0f);
  CHECK(out.weight[1] == 1.0f);

  c.top_k = 5;
  c.normalize_topk = false;
  route(c, gate, x, 2, out);
  for (int t = 0; t < 2; ++t) {
    std::vector<std::int32_t> chosen(out.expert.begin() + 5 * t, out.expert.begin() + 5 * t + 5);
    std::vector<std::int32_t> sorted = chosen;
    std::sort(sorted.begin(), sorted.end());
    CHECK(sorted == std::vector<std::int32_t>{0, 1, 2, 3, 4});
    for (int j = 0; j + 1 < 5; ++j) CHECK(out.weight[5 * t + j] >= out.weight[5 * t + j + 1]);
  }
  CHECK(out.counts == std::vector<std::int64_t>{2, 2, 2, 2, 2});
}

TEST_CASE("an empty batch routes nothing", "[router]") {
  const MoeConfig c = config_for(4, 3, 2);
  const std::vector<float> gate(12, 1.0f);
  RouterOutput out;
  route(c, gate, {}, 0, out);
  CHECK(out.num_tokens == 0);
  CHECK(out.counts == std::vector<std::int64_t>(4, 0));
  CHECK(out.logsumexp_sq_sum == 0);
}
