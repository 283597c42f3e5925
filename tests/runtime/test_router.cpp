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
  route(c, gate, {}, x, 2, out);
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
  route(c, gate, {}, x, 1, out);
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
  route(normalized, gate, {}, x, 1, out);
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
  route(c, gate, {}, x, 2, out);
  CHECK(out.weight[0] == 1.0f);
  CHECK(out.weight[1] == 1.0f);

  c.top_k = 5;
  c.normalize_topk = false;
  route(c, gate, {}, x, 2, out);
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
  route(c, gate, {}, {}, 0, out);
  CHECK(out.num_tokens == 0);
  CHECK(out.counts == std::vector<std::int64_t>(4, 0));
  CHECK(out.logsumexp_sq_sum == 0);
}

TEST_CASE("sigmoid gate: the bias chooses the experts, the unbiased scores weight them", "[router]") {
  MoeConfig c = config_for(4, 2, 2);
  c.gate = GateKind::sigmoid;
  // Logits of token (1, 0): 0.5, 2, -1, 1.5; the bias lifts expert 2 above all.
  const std::vector<float> gate = {0.5f, 0, 2, 0, -1, 0, 1.5f, 0};
  const std::vector<float> bias = {0, 0, 4, 0};
  const std::vector<float> x = {1, 0};
  RouterOutput out;
  route(c, gate, bias, x, 1, out);
  const auto sigmoid = [](double z) { return 1.0 / (1.0 + std::exp(-z)); };
  CHECK(out.expert[0] == 2);
  CHECK(out.expert[1] == 1);
  CHECK(out.weight[0] == Approx(sigmoid(-1)).epsilon(1e-6));
  CHECK(out.weight[1] == Approx(sigmoid(2)).epsilon(1e-6));
  // The aux loss's p is the scores normalised per token.
  const double total = sigmoid(0.5) + sigmoid(2) + sigmoid(-1) + sigmoid(1.5);
  CHECK(out.prob_sum[3] == Approx(sigmoid(1.5) / total).epsilon(1e-6));

  // Scaling comes after normalize_topk.
  c.normalize_topk = true;
  c.routed_scaling_factor = 2.5;
  route(c, gate, bias, x, 1, out);
  CHECK(out.weight[0] + out.weight[1] == Approx(2.5).epsilon(1e-6));
  CHECK(out.weight[0] == Approx(2.5 * sigmoid(-1) / (sigmoid(-1) + sigmoid(2))).epsilon(1e-6));
}

TEST_CASE("group-limited routing picks experts only from the best groups", "[router]") {
  MoeConfig c = config_for(8, 8, 2);
  c.n_group = 4;  // groups {0,1} {2,3} {4,5} {6,7}
  c.topk_group = 2;
  c.gate = GateKind::sigmoid;
  // Every sigmoid ~0, so q is the bias. Group scores (sum of the two largest q): g0 = 0.9+0.1,
  // g1 = 0.95+0 (it holds the best expert but one), g2 = 0.6+0.5, g3 = 0.2+0.2: g2 and g0 win.
  std::vector<float> gate(64, 0.0f);
  for (int e = 0; e < 8; ++e) gate[static_cast<std::size_t>(e * 8 + e)] = 1.0f;
  const std::vector<float> bias = {0.9f, 0.1f, 0.95f, 0.0f, 0.6f, 0.5f, 0.2f, 0.2f};
  const std::vector<float> x(8, -30.0f);
  RouterOutput out;
  route(c, gate, bias, x, 1, out);
  CHECK(out.expert[0] == 0);  // 0.9
  CHECK(out.expert[1] == 4);  // 0.6; expert 2 (0.95) is not selectable
}

TEST_CASE("the selection-bias update moves toward the mean load, sign(0) = 0", "[router]") {
  std::vector<float> bias = {0.5f, 0.0f, -0.25f, 1.0f};
  const std::vector<std::int64_t> counts = {10, 2, 4, 4};  // mean 5
  update_selection_bias(bias, counts, 0.125);
  CHECK(bias == std::vector<float>{0.375f, 0.125f, -0.125f, 1.125f});
  const std::vector<std::int64_t> even = {3, 3, 3, 3};
  update_selection_bias(bias, even, 0.125);
  CHECK(bias == std::vector<float>{0.375f, 0.125f, -0.125f, 1.125f});
}
