// Tests of the float64 reference: hand-checked cases for every rule of SPEC.md §3-§7, and central
// finite differences of L = Σ output·grad_output + aux_loss + z_loss for §8.
#include "tests/reference/moe_reference.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <utility>
#include <vector>

using namespace moe::ref;
using std::int64_t;
using std::size_t;

namespace {

size_t sz(int64_t v) { return static_cast<size_t>(v); }

ExpertParams zero_expert(const LayerConfig& cf) {
  const size_t d = sz(cf.d_model), h = sz(cf.d_hidden);
  const bool swiglu = cf.activation == "swiglu";
  return {std::vector<double>(h * d), std::vector<double>(swiglu ? 0 : h),
          std::vector<double>(d * h), std::vector<double>(swiglu ? 0 : d),
          std::vector<double>(swiglu ? h * d : 0)};
}

// A case whose router logits are given directly: d = E and gate = identity, so z_t = x_t.
LayerCase logits_case(LayerConfig cf, std::vector<int64_t> tokens_per_rank,
                      const std::vector<std::vector<double>>& logits) {
  cf.d_model = cf.num_experts;
  LayerCase c;
  c.config = cf;
  const size_t e_count = sz(cf.num_experts);
  c.params.gate.assign(e_count * e_count, 0.0);
  for (size_t e = 0; e < e_count; ++e) c.params.gate[e * e_count + e] = 1.0;
  c.params.experts.assign(e_count, zero_expert(cf));
  c.tokens_per_rank = std::move(tokens_per_rank);
  for (const auto& row : logits) c.input.insert(c.input.end(), row.begin(), row.end());
  return c;
}

std::vector<bool> bools(std::initializer_list<int> v) {
  std::vector<bool> out;
  for (int b : v) out.push_back(b != 0);
  return out;
}

double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

}  // namespace

TEST_CASE("reference: capacity follows SPEC 4: max(min_capacity, ceil(cf * T_r * k / E))",
          "[reference]") {
  LayerConfig cf;  // E = 8, k = 2, cf = 1.25, min_capacity = 4
  CHECK(capacity(cf, 64) == 20);
  CHECK(capacity(cf, 8) == 4);    // ceil(2.5) = 3 < min_capacity
  CHECK(capacity(cf, 13) == 5);   // ceil(4.0625)
  CHECK(capacity(cf, 0) == 0);    // T_r = 0
  cf.min_capacity = 0;
  CHECK(capacity(cf, 1) == 1);    // ceil(0.3125)
  CHECK(capacity(cf, 0) == 0);
  cf.capacity_factor = 1.0;
  cf.num_experts = 4;
  CHECK(capacity(cf, 6) == 3);    // exact: no spurious round-up
  cf.capacity_factor = 0.0;
  CHECK_FALSE(capacity(cf, 100).has_value());  // dropless
  cf.capacity_factor = -1.0;
  CHECK_FALSE(capacity(cf, 100).has_value());
}

TEST_CASE("reference: top-k takes the largest probabilities, ties to the smaller expert index",
          "[reference]") {
  LayerConfig cf;
  cf.num_experts = 4;
  cf.capacity_factor = 0;
  SECTION("k = 1 between two equal maxima") {
    cf.top_k = 1;
    const LayerResult r = run_reference(logits_case(cf, {1}, {{0, 1, 1, 0}}));
    CHECK(r.choices == std::vector<int64_t>{1});
    CHECK(r.min_margin == 0.0);  // the tie decided the choice
  }
  SECTION("k = 2 in descending order") {
    cf.top_k = 2;
    const LayerResult r = run_reference(logits_case(cf, {2}, {{0, 1, 1, 0}, {-1, 3, 0, 2}}));
    CHECK(r.choices == std::vector<int64_t>{1, 2, 1, 3});
    // The k-th minus the (k+1)-th probability: token 0 (e^1 - e^0) / Σ, token 1 (e^2 - e^0) / Σ.
    const double gap0 = (std::exp(1.0) - 1.0) / (2.0 + 2.0 * std::exp(1.0));
    const double gap1 =
        (std::exp(2.0) - 1.0) / (std::exp(-1.0) + std::exp(3.0) + 1.0 + std::exp(2.0));
    CHECK(gap1 < gap0);
    CHECK(r.min_margin == Approx(gap1).epsilon(1e-12));
  }
  SECTION("k = 3 over all-equal logits") {
    cf.top_k = 3;
    const LayerResult r = run_reference(logits_case(cf, {1}, {{0.5, 0.5, 0.5, 0.5}}));
    CHECK(r.choices == std::vector<int64_t>{0, 1, 2});
  }
  SECTION("k = E leaves nothing to decide") {
    cf.top_k = 4;
    const LayerResult r = run_reference(logits_case(cf, {1}, {{0, 2, 1, 3}}));
    CHECK(r.choices == std::vector<int64_t>{3, 1, 2, 0});
    CHECK(std::isinf(r.min_margin));
  }
}

TEST_CASE("reference: position policy: all first choices in token order, then second choices",
          "[reference]") {
  LayerConfig cf;
  cf.num_experts = 2;
  cf.top_k = 2;
  cf.capacity_factor = 0.1;  // ceil(0.1 * 3 * 2 / 2) = 1 < min_capacity = 2
  cf.min_capacity = 2;
  const LayerCase c = logits_case(cf, {3}, {{1, 0}, {0, 1}, {2, 0}});
  const LayerResult r = run_reference(c);
  CHECK(r.choices == std::vector<int64_t>{0, 1, 1, 0, 0, 1});
  // Expert 0 ranks t0j0, t2j0, t1j1 and keeps two; expert 1 ranks t1j0, t0j1, t2j1 (every
  // first choice before any second choice, whatever the token index) and keeps two.
  CHECK(r.kept == bools({1, 1, 1, 0, 1, 0}));
  CHECK(reference_kept(c) == r.kept);
  CHECK(r.expert_counts == std::vector<int64_t>{3, 3});
  CHECK(r.expert_kept == std::vector<int64_t>{2, 2});
  CHECK(r.dropped_assignments == 2);
  CHECK(r.dropped_tokens == 0);
}

TEST_CASE("reference: position and score policies differ where SPEC 4 says they do",
          "[reference]") {
  LayerConfig cf;
  cf.num_experts = 4;
  cf.top_k = 1;
  cf.capacity_factor = 0.01;  // ceil(0.01 * 6 / 4) = 1 < min_capacity = 2
  cf.min_capacity = 2;
  // Every token chooses expert 0, with these logits (so these weight ranks).
  const std::vector<double> a = {1, 2, 3, 0.5, 4, 2.5};
  std::vector<std::vector<double>> logits;
  for (double v : a) logits.push_back({v, 0, 0, 0});

  cf.drop_policy = "position";
  const LayerResult pos = run_reference(logits_case(cf, {6}, logits));
  CHECK(pos.kept == bools({1, 1, 0, 0, 0, 0}));
  cf.drop_policy = "score";
  const LayerResult score = run_reference(logits_case(cf, {6}, logits));
  CHECK(score.kept == bools({0, 0, 1, 0, 1, 0}));
  // The score cut lies between logit 3 (kept) and 2.5 (first dropped).
  const double p3 = std::exp(3.0) / (std::exp(3.0) + 3.0);
  const double p25 = std::exp(2.5) / (std::exp(2.5) + 3.0);
  CHECK(score.min_margin == Approx(p3 - p25).epsilon(1e-12));
  for (const LayerResult* r : {&pos, &score}) {
    CHECK(r->expert_counts == std::vector<int64_t>{6, 0, 0, 0});
    CHECK(r->expert_kept == std::vector<int64_t>{2, 0, 0, 0});
    CHECK(r->dropped_assignments == 4);
    CHECK(r->dropped_tokens == 4);
  }
}

TEST_CASE("reference: score policy breaks equal weights by the smaller token index",
          "[reference]") {
  LayerConfig cf;
  cf.num_experts = 2;
  cf.top_k = 1;
  cf.capacity_factor = 0.1;
  cf.min_capacity = 2;
  cf.drop_policy = "score";
  const LayerResult r = run_reference(logits_case(cf, {4}, {{1, 0}, {1, 0}, {1, 0}, {1, 0}}));
  CHECK(r.kept == bools({1, 1, 0, 0}));
  CHECK(r.min_margin == 0.0);  // an exact tie at the cut
  cf.drop_policy = "position";
  const LayerResult p = run_reference(logits_case(cf, {4}, {{1, 0}, {1, 0}, {1, 0}, {1, 0}}));
  CHECK(p.kept == bools({1, 1, 0, 0}));
  CHECK(p.min_margin == Approx(sigmoid(1) - sigmoid(-1)));  // the position order has no ties
}

TEST_CASE("reference: capacity is decided per source rank from its own T_r", "[reference]") {
  LayerConfig cf;
  cf.num_experts = 2;
  cf.top_k = 1;
  cf.capacity_factor = 0.5;  // rank 0: ceil(0.5 * 4 / 2) = 1; rank 2: ceil(0.5 * 2 / 2) = 1
  cf.min_capacity = 1;
  std::vector<std::vector<double>> logits(6, std::vector<double>{1, 0});
  const LayerResult r = run_reference(logits_case(cf, {4, 0, 2}, logits));
  CHECK(r.kept == bools({1, 0, 0, 0, 1, 0}));  // each rank keeps its own first token
  CHECK(r.expert_kept == std::vector<int64_t>{2, 0});
  cf.capacity_factor = 2.0;  // rank 0: 4, rank 2: 2: nothing dropped
  CHECK(run_reference(logits_case(cf, {4, 0, 2}, logits)).dropped_assignments == 0);
  cf.capacity_factor = 1.0;  // rank 0: 2, rank 2: 1
  CHECK(run_reference(logits_case(cf, {4, 0, 2}, logits)).kept == bools({1, 1, 0, 0, 1, 0}));
}

TEST_CASE("reference: capacity_factor <= 0 is dropless", "[reference]") {
  LayerConfig cf;
  cf.num_experts = 4;
  cf.top_k = 2;
  cf.min_capacity = 0;
  std::vector<std::vector<double>> logits(10, std::vector<double>{3, 1, 0, 0});
  for (double factor : {0.0, -1.0}) {
    cf.capacity_factor = factor;
    const LayerResult r = run_reference(logits_case(cf, {7, 3}, logits));
    CHECK(r.dropped_assignments == 0);
    CHECK(r.expert_kept == std::vector<int64_t>{10, 10, 0, 0});
    CHECK(std::all_of(r.kept.begin(), r.kept.end(), [](bool b) { return b; }));
  }
  cf.capacity_factor = 1.0;  // the same routing with a limit does drop
  CHECK(run_reference(logits_case(cf, {7, 3}, logits)).dropped_assignments > 0);
}

TEST_CASE("reference: a token with every assignment dropped outputs zero; no renormalization",
          "[reference]") {
  LayerConfig cf;
  cf.num_experts = 2;
  cf.top_k = 2;
  cf.capacity_factor = 0.1;
  cf.min_capacity = 1;
  cf.activation = "relu";
  cf.d_hidden = 2;
  LayerCase c = logits_case(cf, {3}, {{1, 0}, {1, 0}, {0, 1}});
  // f_e(x) = relu(x) + b2 with b2 = (e + 1, 0): never zero.
  const size_t d = 2;
  for (size_t e = 0; e < 2; ++e) {
    ExpertParams& p = c.params.experts[e];
    p.w1 = {1, 0, 0, 1};
    p.w2 = {1, 0, 0, 1};
    p.b2 = {static_cast<double>(e + 1), 0};
  }
  const LayerResult r = run_reference(c);
  // Expert 0 keeps t0j0 (before t1j0 and t2j1), expert 1 keeps t2j0: token 1 loses both.
  CHECK(r.kept == bools({1, 0, 0, 0, 1, 0}));
  CHECK(r.expert_counts == std::vector<int64_t>{3, 3});
  CHECK(r.expert_kept == std::vector<int64_t>{1, 1});
  CHECK(r.dropped_assignments == 4);
  CHECK(r.dropped_tokens == 1);
  CHECK(r.output[1 * d + 0] == 0.0);
  CHECK(r.output[1 * d + 1] == 0.0);
  // Token 0 keeps only its first choice, weight p = sigmoid(1), not 1.
  CHECK(r.output[0] == Approx(sigmoid(1) * (1.0 + 1.0)).epsilon(1e-14));
  CHECK(r.output[1] == 0.0);
  // Token 2: expert 1 on x = (0, 1): relu(x) + (2, 0) = (2, 1).
  CHECK(r.output[2 * d + 0] == Approx(sigmoid(1) * 2.0).epsilon(1e-14));
  CHECK(r.output[2 * d + 1] == Approx(sigmoid(1) * 1.0).epsilon(1e-14));
}

TEST_CASE("reference: normalize_topk divides by the sum of the selected probabilities",
          "[reference]") {
  LayerConfig cf;
  cf.num_experts = 4;
  cf.capacity_factor = 0;
  cf.normalize_topk = true;
  cf.top_k = 2;
  const LayerResult r = run_reference(logits_case(cf, {1}, {{2, 1, -1, 0}}));
  // k = 2: Mixtral's softmax over the two selected logits.
  CHECK(r.weights[0] == Approx(sigmoid(1)).epsilon(1e-14));
  CHECK(r.weights[1] == Approx(sigmoid(-1)).epsilon(1e-14));
  cf.top_k = 1;
  CHECK(run_reference(logits_case(cf, {1}, {{2, 1, -1, 0}})).weights[0] == 1.0);
}

TEST_CASE("reference: experts apply each activation of SPEC 5", "[reference]") {
  // One expert, d = h = 1, unit weights: the layer output is act(x) itself.
  LayerConfig cf;
  cf.num_experts = 1;
  cf.top_k = 1;
  cf.d_model = 1;
  cf.d_hidden = 1;
  cf.capacity_factor = 0;
  const auto layer = [&](const std::string& act, double x) {
    cf.activation = act;
    LayerCase c;
    c.config = cf;
    c.params.gate = {1.0};
    ExpertParams p = zero_expert(cf);
    p.w1 = {1.0};
    p.w2 = {1.0};
    if (act == "swiglu") p.w3 = {2.0};
    c.params.experts = {p};
    c.tokens_per_rank = {1};
    c.input = {x};
    return run_reference(c).output[0];
  };
  CHECK(layer("gelu", 1.0) == Approx(0.8413447460685429).epsilon(1e-15));
  CHECK(layer("gelu", -1.0) == Approx(-0.15865525393145707).epsilon(1e-14));
  CHECK(layer("gelu_tanh", 1.0) == Approx(0.8411919906082768).epsilon(1e-15));
  CHECK(layer("silu", 1.0) == Approx(0.7310585786300049).epsilon(1e-15));
  CHECK(layer("relu", -0.5) == 0.0);
  CHECK(layer("relu", 2.0) == 2.0);
  CHECK(layer("swiglu", 1.0) == Approx(0.7310585786300049 * 2.0).epsilon(1e-15));
}

TEST_CASE("reference: relu'(0) = 0", "[reference]") {
  LayerConfig cf;
  cf.num_experts = 1;
  cf.top_k = 1;
  cf.d_model = 1;
  cf.d_hidden = 1;
  cf.activation = "relu";
  LayerCase c;
  c.config = cf;
  c.params.gate = {1.0};
  c.params.experts = {ExpertParams{{1.0}, {0.0}, {1.0}, {0.0}, {}}};
  c.tokens_per_rank = {1};
  c.input = {0.0};
  c.grad_output = {1.0};
  const LayerResult r = run_reference(c);
  REQUIRE(r.grads);
  CHECK(r.grads->input[0] == 0.0);  // with one expert the router path is exactly zero too
  CHECK(r.grads->params.experts[0].w1[0] == 0.0);
  CHECK(r.grads->params.experts[0].b1[0] == 0.0);
  CHECK(r.grads->params.experts[0].b2[0] == 1.0);
}

TEST_CASE("reference: auxiliary losses by hand (SPEC 7), over all tokens of the group",
          "[reference]") {
  LayerConfig cf;
  cf.num_experts = 2;
  cf.top_k = 1;
  cf.capacity_factor = 0;
  cf.aux_loss_coef = 0.1;
  cf.z_loss_coef = 0.2;
  // p = (1/2, 1/2) -> expert 0 by the tie rule; p = (3/4, 1/4) -> expert 0.
  const LayerResult r = run_reference(logits_case(cf, {1, 1}, {{0, 0}, {std::log(3.0), 0}}));
  // f = (1, 0), P = (5/8, 3/8): aux = 0.1 * 2 * 5/8.
  CHECK(r.aux_loss == Approx(0.1 * 2.0 * 0.625).epsilon(1e-14));
  // lse = ln 2 and ln 4 = 2 ln 2: z = 0.2 * (1 + 4) ln²2 / 2.
  const double ln2 = std::log(2.0);
  CHECK(r.z_loss == Approx(0.2 * 2.5 * ln2 * ln2).epsilon(1e-14));
  // f_e counts assignments before dropping.
  cf.capacity_factor = 0.1;
  cf.min_capacity = 0;
  const LayerResult dropped =
      run_reference(logits_case(cf, {2}, {{0, 0}, {std::log(3.0), 0}}));
  CHECK(dropped.dropped_assignments == 1);
  CHECK(dropped.aux_loss == Approx(r.aux_loss).epsilon(1e-14));
}

TEST_CASE("reference: T = 0: empty outputs, zero losses and zero gradients", "[reference]") {
  CaseSpec spec;
  spec.config.aux_loss_coef = 0.5;
  spec.config.z_loss_coef = 0.5;
  spec.tokens_per_rank = {0, 0};
  const LayerCase c = make_case(spec);
  CHECK(c.input.empty());
  const LayerResult r = run_reference(c);
  CHECK(r.output.empty());
  CHECK(r.aux_loss == 0.0);
  CHECK(r.z_loss == 0.0);
  CHECK(r.expert_counts == std::vector<int64_t>(8, 0));
  CHECK(r.dropped_tokens == 0);
  REQUIRE(r.grads);
  CHECK(std::all_of(r.grads->params.gate.begin(), r.grads->params.gate.end(),
                    [](double v) { return v == 0.0; }));
  REQUIRE(r.grads->params.experts.size() == 8);
  for (const ExpertParams& g : r.grads->params.experts) {
    CHECK(g.w1.size() == c.params.experts[0].w1.size());
    CHECK(std::all_of(g.w1.begin(), g.w1.end(), [](double v) { return v == 0.0; }));
  }
}

TEST_CASE("reference: malformed cases are rejected", "[reference]") {
  CaseSpec spec;
  spec.tokens_per_rank = {3};
  const LayerCase good = make_case(spec);
  LayerCase c = good;
  c.config.top_k = 9;
  CHECK_THROWS_AS(run_reference(c), std::invalid_argument);
  c = good;
  c.config.activation = "tanh";
  CHECK_THROWS_AS(run_reference(c), std::invalid_argument);
  c = good;
  c.config.drop_policy = "random";
  CHECK_THROWS_AS(run_reference(c), std::invalid_argument);
  c = good;
  c.tokens_per_rank = {2};
  CHECK_THROWS_AS(run_reference(c), std::invalid_argument);
  c = good;
  c.params.experts[3].b1.clear();
  CHECK_THROWS_AS(run_reference(c), std::invalid_argument);
}

// ---------------------------------------------------------------------------------------------
// The generator.

namespace {

bool all_float(const std::vector<double>& v) {
  return std::all_of(v.begin(), v.end(), [](double x) {
    return static_cast<double>(static_cast<float>(x)) == x;
  });
}

std::vector<const std::vector<double>*> case_tensors(const LayerCase& c) {
  std::vector<const std::vector<double>*> out = {&c.input, &c.grad_output, &c.params.gate};
  for (const ExpertParams& p : c.params.experts) {
    for (const auto* v : {&p.w1, &p.b1, &p.w2, &p.b2, &p.w3}) out.push_back(v);
  }
  out.push_back(&c.params.score_bias);
  if (const auto& s = c.params.shared_expert) {
    for (const auto* v : {&s->w1, &s->b1, &s->w2, &s->b2, &s->w3}) out.push_back(v);
  }
  return out;
}

}  // namespace

TEST_CASE("reference: make_case is deterministic, float-exact and has clear margins",
          "[reference]") {
  CaseSpec spec;
  spec.tokens_per_rank = {40, 0, 25, 31};
  spec.seed = 7;
  const auto activation = GENERATE(as<std::string>{}, "gelu", "swiglu");
  const auto policy = GENERATE(as<std::string>{}, "position", "score");
  const bool hot = GENERATE(false, true);
  spec.config.activation = activation;
  spec.config.drop_policy = policy;
  spec.hot_expert = hot;
  INFO(activation << " " << policy << " hot=" << hot);

  const LayerCase a = make_case(spec);
  const LayerCase b = make_case(spec);
  const auto ta = case_tensors(a), tb = case_tensors(b);
  for (size_t i = 0; i < ta.size(); ++i) CHECK(*ta[i] == *tb[i]);
  CHECK(a.tokens_per_rank == spec.tokens_per_rank);
  CHECK(a.input.size() == 96u * 16u);
  CHECK(a.grad_output.size() == a.input.size());
  CHECK(a.params.experts.size() == 8u);
  CHECK(a.params.experts[0].w3.size() == (activation == "swiglu" ? 32u * 16u : 0u));
  CHECK(a.params.experts[0].b1.size() == (activation == "swiglu" ? 0u : 32u));
  for (const auto* v : ta) CHECK(all_float(*v));

  const LayerResult r = run_reference(a);
  CHECK(r.min_margin >= kMinMargin);
  // Activations are O(1): the init is scaled by 1/sqrt(fan_in).
  double sq = 0;
  for (double v : r.output) sq += v * v;
  const double rms = std::sqrt(sq / static_cast<double>(r.output.size()));
  CHECK(rms > 0.02);
  CHECK(rms < 5.0);

  spec.seed = 8;
  CHECK(make_case(spec).input != a.input);
  spec.with_grad_output = false;
  CHECK(make_case(spec).grad_output.empty());

  if (hot) {
    int64_t first_zero = 0;
    for (size_t t = 0; t < 96; ++t) first_zero += r.choices[t * 2] == 0 ? 1 : 0;
    CHECK(first_zero >= 80);
    CHECK(r.dropped_assignments > 0);
  }
}

TEST_CASE("reference: make_case redraws to clear margins on large batches", "[reference]") {
  CaseSpec spec;
  spec.config.num_experts = 64;
  spec.config.top_k = 4;
  spec.config.d_model = 8;
  spec.config.d_hidden = 4;
  spec.config.drop_policy = "score";
  spec.tokens_per_rank = {3000, 5000};
  spec.with_grad_output = false;
  const LayerCase c = make_case(spec);
  const LayerResult r = run_reference(c);
  CHECK(r.min_margin >= kMinMargin);
  CHECK(r.dropped_assignments > 0);
}

// ---------------------------------------------------------------------------------------------
// Finite differences of L for SPEC §8.

namespace {

std::vector<std::pair<std::string, std::vector<double>*>> named_tensors(std::vector<double>& input,
                                                                        LayerParams& params) {
  std::vector<std::pair<std::string, std::vector<double>*>> out = {{"input", &input},
                                                                   {"gate.weight", &params.gate}};
  for (size_t e = 0; e < params.experts.size(); ++e) {
    ExpertParams& p = params.experts[e];
    const std::string pre = "experts." + std::to_string(e) + ".";
    out.emplace_back(pre + "w1.weight", &p.w1);
    out.emplace_back(pre + "w1.bias", &p.b1);
    out.emplace_back(pre + "w2.weight", &p.w2);
    out.emplace_back(pre + "w2.bias", &p.b2);
    out.emplace_back(pre + "w3.weight", &p.w3);
  }
  if (params.shared_expert) {
    ExpertParams& p = *params.shared_expert;
    out.emplace_back("shared_expert.w1.weight", &p.w1);
    out.emplace_back("shared_expert.w1.bias", &p.b1);
    out.emplace_back("shared_expert.w2.weight", &p.w2);
    out.emplace_back("shared_expert.w2.bias", &p.b2);
    out.emplace_back("shared_expert.w3.weight", &p.w3);
  }
  return out;
}

// SPEC 8: the selection bias only chooses experts. While the choices stay, L does not move at all
// when it does, and the reference reports no gradient for it.
void check_no_bias_gradient(LayerCase c, const LayerResult& base) {
  CHECK(base.grads->params.score_bias.empty());
  const double l0 = total_loss(c, base);
  for (double& b : c.params.score_bias) {
    const double saved = b;
    b = saved + 1e-6;
    const LayerResult moved = run_reference(c);
    b = saved;
    REQUIRE(moved.choices == base.choices);
    CHECK(total_loss(c, moved) == l0);
  }
}

// Every element of every tensor: central differences with step 1e-6 against the analytic
// gradient. The case's margins (>= 1e-5) keep every top-k and capacity decision fixed under the
// step, and the test checks so rather than trusting it.
void check_gradients(LayerCase c) {
  const LayerResult base = run_reference(c);
  REQUIRE(base.grads);
  LayerGrads grads = *base.grads;
  const auto analytic = named_tensors(grads.input, grads.params);
  const auto values = named_tensors(c.input, c.params);
  REQUIRE(analytic.size() == values.size());
  constexpr double step = 1e-6;
  double router_norm = 0;
  for (size_t i = 0; i < values.size(); ++i) {
    std::vector<double>& v = *values[i].second;
    const std::vector<double>& g = *analytic[i].second;
    REQUIRE(g.size() == v.size());
    double worst = 0;
    size_t worst_at = 0;
    for (size_t j = 0; j < v.size(); ++j) {
      const double saved = v[j];
      v[j] = saved + step;
      const LayerResult plus = run_reference(c);
      v[j] = saved - step;
      const LayerResult minus = run_reference(c);
      v[j] = saved;
      REQUIRE(plus.choices == base.choices);
      REQUIRE(minus.choices == base.choices);
      REQUIRE(plus.kept == base.kept);
      REQUIRE(minus.kept == base.kept);
      const double fd = (total_loss(c, plus) - total_loss(c, minus)) / (2 * step);
      // Relative error, absolute below 1e-2 where rounding noise (~1e-16 * L / step) dominates.
      const double err = std::abs(fd - g[j]) / (1e-2 + std::abs(g[j]));
      if (err > worst) {
        worst = err;
        worst_at = j;
      }
    }
    if (values[i].first == "gate.weight") {
      for (double x : g) router_norm += x * x;
    }
    INFO(values[i].first << "[" << worst_at << "]: analytic "
                         << (g.empty() ? 0.0 : g[worst_at]));
    CHECK(worst < 1e-6);
  }
  CHECK(router_norm > 0);  // the router path is exercised, not vacuous
  check_no_bias_gradient(c, base);
}

CaseSpec tiny_spec(const std::string& activation, bool normalize, int64_t k,
                   const std::string& policy) {
  CaseSpec spec;
  spec.config.num_experts = 4;
  spec.config.d_model = 5;
  spec.config.d_hidden = 6;
  spec.config.top_k = k;
  spec.config.activation = activation;
  spec.config.normalize_topk = normalize;
  spec.config.drop_policy = policy;
  spec.config.capacity_factor = 0.5;  // C_r = max(1, ceil(0.5 * T_r * k / 4)): drops for sure
  spec.config.min_capacity = 1;
  spec.config.aux_loss_coef = 0.3;
  spec.config.z_loss_coef = 0.2;
  spec.tokens_per_rank = {3, 4};
  spec.seed = 11;
  return spec;
}

}  // namespace

TEST_CASE("reference: backward matches finite differences, with capacity drops",
          "[reference][fd]") {
  const auto activation = GENERATE(as<std::string>{}, "gelu", "gelu_tanh", "relu", "silu",
                                   "swiglu");
  const bool normalize = GENERATE(false, true);
  const int64_t k = GENERATE(int64_t{1}, int64_t{2});
  const auto policy = GENERATE(as<std::string>{}, "position", "score");
  INFO(activation << " normalize_topk=" << normalize << " k=" << k << " " << policy);
  const LayerCase c = make_case(tiny_spec(activation, normalize, k, policy));
  REQUIRE(run_reference(c).dropped_assignments > 0);
  check_gradients(c);
}

TEST_CASE("reference: backward matches finite differences: dropless, hot expert, an empty rank",
          "[reference][fd]") {
  const auto activation = GENERATE(as<std::string>{}, "gelu", "swiglu");
  const bool normalize = GENERATE(false, true);
  CaseSpec spec = tiny_spec(activation, normalize, 2, "score");
  INFO(activation << " normalize_topk=" << normalize);
  SECTION("dropless") {
    spec.config.capacity_factor = 0;
    const LayerCase c = make_case(spec);
    REQUIRE(run_reference(c).dropped_assignments == 0);
    check_gradients(c);
  }
  SECTION("hot expert, three ranks, one of them empty") {
    spec.hot_expert = true;
    spec.config.capacity_factor = 1.0;
    spec.tokens_per_rank = {4, 0, 5};
    spec.config.top_k = 3;
    const LayerCase c = make_case(spec);
    REQUIRE(run_reference(c).dropped_assignments > 0);
    check_gradients(c);
  }
}

TEST_CASE("reference: normalize_topk with k = 1 gives the router exactly zero gradient",
          "[reference]") {
  CaseSpec spec = tiny_spec("gelu", true, 1, "position");
  spec.config.aux_loss_coef = 0;
  spec.config.z_loss_coef = 0;
  const LayerResult r = run_reference(make_case(spec));
  REQUIRE(r.grads);
  const auto& g = r.grads->params.gate;
  CHECK(std::all_of(g.begin(), g.end(), [](double v) { return v == 0.0; }));
  // Without the normalization the same case does train the router.
  spec.config.normalize_topk = false;
  const LayerResult u = run_reference(make_case(spec));
  CHECK(std::any_of(u.grads->params.gate.begin(), u.grads->params.gate.end(),
                    [](double v) { return v != 0.0; }));
}

// =============================================================================================
// SPEC version 2: sigmoid gate and selection bias, group-limited routing, routed scaling, global
// capacity, shared expert, selection-bias update.

namespace {

// logits_case with gate = sigmoid.
LayerCase sigmoid_case(LayerConfig cf, std::vector<int64_t> tokens_per_rank,
                       const std::vector<std::vector<double>>& logits) {
  cf.gate = "sigmoid";
  return logits_case(cf, std::move(tokens_per_rank), logits);
}

// DeepSeek-V3's router and experts in miniature: sigmoid scores with a selection bias, 16
// experts in 4 groups of which 2 are selectable, k = 4, normalized weights scaled by 2.5, swiglu,
// one shared expert; here with a capacity over the whole group (DeepSeek-V3 itself is dropless).
CaseSpec deepseek_v3_like_spec() {
  CaseSpec spec;
  LayerConfig& cf = spec.config;
  cf.num_experts = 16;
  cf.n_group = 4;
  cf.topk_group = 2;
  cf.top_k = 4;
  cf.gate = "sigmoid";
  cf.normalize_topk = true;
  cf.routed_scaling_factor = 2.5;
  cf.activation = "swiglu";
  cf.d_shared_hidden = 4;
  cf.capacity_scope = "global";
  cf.capacity_factor = 0.75;
  cf.min_capacity = 1;
  cf.bias_update_rate = 0.001;
  cf.d_model = 5;
  cf.d_hidden = 6;
  cf.aux_loss_coef = 0.3;
  cf.z_loss_coef = 0.2;
  spec.with_score_bias = true;
  spec.tokens_per_rank = {5, 0, 6};
  spec.seed = 21;
  return spec;
}

}  // namespace

TEST_CASE("reference v2: version-2 fields default to the version-1 layer", "[reference][v2]") {
  const LayerConfig cf;
  CHECK(cf.gate == "softmax");
  CHECK(cf.n_group == 1);
  CHECK(cf.topk_group == 0);
  CHECK(cf.routed_scaling_factor == 1.0);
  CHECK(cf.capacity_scope == "rank");
  CHECK(cf.bias_update_rate == 0.0);
  CHECK(cf.d_shared_hidden == 0);
  CaseSpec spec;
  spec.tokens_per_rank = {5, 3};
  const LayerCase c = make_case(spec);
  CHECK(c.params.score_bias.empty());
  CHECK_FALSE(c.params.shared_expert.has_value());
  const LayerResult r = run_reference(c);
  CHECK(r.score_bias_updated.empty());  // softmax has no selection bias
  REQUIRE(r.grads);
  CHECK_FALSE(r.grads->params.shared_expert.has_value());
}

TEST_CASE("reference v2: sigmoid gate: the bias selects by q = s + b, the weight is s",
          "[reference][v2]") {
  LayerConfig cf;
  cf.num_experts = 4;
  cf.top_k = 2;
  cf.capacity_factor = 0;
  SECTION("no bias: the largest sigmoid scores, not a softmax") {
    const LayerResult r = run_reference(sigmoid_case(cf, {1}, {{2, 1, 0, -1}}));
    CHECK(r.choices == std::vector<int64_t>{0, 1});
    CHECK(r.weights[0] == Approx(sigmoid(2)).epsilon(1e-14));
    CHECK(r.weights[1] == Approx(sigmoid(1)).epsilon(1e-14));
    CHECK(r.min_margin == Approx(sigmoid(1) - sigmoid(0)).epsilon(1e-12));
  }
  SECTION("a positive bias lifts expert 2 into the choice, weighted by its unbiased score") {
    LayerCase c = sigmoid_case(cf, {1}, {{2, 1, 0, -1}});
    c.params.score_bias = {0, 0, 2, 0};  // q = (s(2), s(1), 2.5, s(-1))
    const LayerResult r = run_reference(c);
    CHECK(r.choices == std::vector<int64_t>{2, 0});
    CHECK(r.weights[0] == 0.5);  // sigmoid(0), not 2.5
    CHECK(r.weights[1] == Approx(sigmoid(2)).epsilon(1e-14));
    // The k-th minus the (k+1)-th q: s(2) - s(1).
    CHECK(r.min_margin == Approx(sigmoid(2) - sigmoid(1)).epsilon(1e-12));
  }
  SECTION("a negative bias pushes expert 0 out") {
    LayerCase c = sigmoid_case(cf, {1}, {{2, 1, 0, -1}});
    c.params.score_bias = {-1, 0, 0, 0};
    const LayerResult r = run_reference(c);
    CHECK(r.choices == std::vector<int64_t>{1, 2});
    CHECK(r.weights[0] == Approx(sigmoid(1)).epsilon(1e-14));
    CHECK(r.weights[1] == 0.5);
  }
  SECTION("equal q: ties to the smaller expert index") {
    LayerCase c = sigmoid_case(cf, {1}, {{0, 0, 0, 0}});
    c.params.score_bias = {0, 0.25, 0, 0.25};
    const LayerResult r = run_reference(c);
    CHECK(r.choices == std::vector<int64_t>{1, 3});
    CHECK(r.weights == std::vector<double>{0.5, 0.5});
  }
}

TEST_CASE("reference v2: group-limited routing (SPEC 3)", "[reference][v2]") {
  LayerConfig cf;
  cf.capacity_factor = 0;
  SECTION("only the top-M groups' experts are selectable") {
    cf.num_experts = 8;
    cf.n_group = 4;
    cf.topk_group = 2;
    cf.top_k = 2;
    // Group scores (two largest q): g0 s(3)+s(-4), g1 s(1.5)+s(1), g2 s(0.5)+s(0.2), g3 tiny.
    // Groups 1 and 2 win although expert 0 has the largest score of all.
    const std::vector<double> z = {3, -4, 1, 1.5, 0.5, 0.2, -3, -3};
    const LayerResult r = run_reference(sigmoid_case(cf, {1}, {z}));
    CHECK(r.choices == std::vector<int64_t>{3, 2});
    CHECK(r.weights[0] == Approx(sigmoid(1.5)).epsilon(1e-14));
    const double group_gap = (sigmoid(0.5) + sigmoid(0.2)) - (sigmoid(3) + sigmoid(-4));
    const double topk_gap = sigmoid(1) - sigmoid(0.5);
    CHECK(r.min_margin == Approx(std::min(group_gap, topk_gap)).epsilon(1e-12));
    cf.topk_group = 0;  // M = G: plain top-k
    CHECK(run_reference(sigmoid_case(cf, {1}, {z})).choices == std::vector<int64_t>{0, 3});
    cf.topk_group = 4;
    CHECK(run_reference(sigmoid_case(cf, {1}, {z})).choices == std::vector<int64_t>{0, 3});
  }
  SECTION("a group scores by the sum of its two largest q, not its maximum; the margin counts") {
    cf.num_experts = 4;
    cf.n_group = 2;
    cf.topk_group = 1;
    cf.top_k = 1;
    // g0: s(1) + s(-1) (max s(1)); g1: s(0.9) + s(-0.8), larger by ~0.02.
    const LayerResult r = run_reference(sigmoid_case(cf, {1}, {{1, -1, 0.9, -0.8}}));
    CHECK(r.choices == std::vector<int64_t>{2});
    const double group_gap = (sigmoid(0.9) + sigmoid(-0.8)) - (sigmoid(1) + sigmoid(-1));
    CHECK(group_gap < sigmoid(0.9) - sigmoid(-0.8));
    CHECK(r.min_margin == Approx(group_gap).epsilon(1e-9));
  }
  SECTION("min(2, E/G): three experts per group, only the two largest count") {
    cf.num_experts = 6;
    cf.n_group = 2;
    cf.topk_group = 1;
    cf.top_k = 1;
    // g0: 0.5 + 0.5 (all three: 1.5); g1: s(2) + s(-0.5) ~ 1.26 (all three: ~1.26).
    const LayerResult r = run_reference(sigmoid_case(cf, {1}, {{0, 0, 0, 2, -0.5, -9}}));
    CHECK(r.choices == std::vector<int64_t>{3});
  }
  SECTION("min(2, E/G): one expert per group, groups are the experts") {
    cf.num_experts = 4;
    cf.n_group = 4;
    cf.topk_group = 2;
    cf.top_k = 2;
    const LayerResult r = run_reference(sigmoid_case(cf, {1}, {{0.1, 2, -1, 1}}));
    CHECK(r.choices == std::vector<int64_t>{1, 3});
    CHECK(r.min_margin == Approx(sigmoid(1) - sigmoid(0.1)).epsilon(1e-12));
  }
  SECTION("equal group scores: ties to the smaller group index") {
    cf.num_experts = 4;
    cf.n_group = 2;
    cf.topk_group = 1;
    cf.top_k = 1;
    // g0 = s(0.3) + s(1.2) and g1 = s(1.2) + s(0.3): bitwise equal sums.
    const LayerResult r = run_reference(sigmoid_case(cf, {1}, {{0.3, 1.2, 1.2, 0.3}}));
    CHECK(r.choices == std::vector<int64_t>{1});
    CHECK(r.min_margin == 0.0);  // the tie decided the group
  }
  SECTION("with the softmax gate too") {
    cf.num_experts = 4;
    cf.n_group = 2;
    cf.topk_group = 1;
    cf.top_k = 2;
    // g0 = p0 + p1 > g1 = p2 + p3 although p2 > p1.
    const LayerResult r = run_reference(logits_case(cf, {1}, {{2, -3, 1, 0.5}}));
    CHECK(r.choices == std::vector<int64_t>{0, 1});
    cf.topk_group = 2;
    CHECK(run_reference(logits_case(cf, {1}, {{2, -3, 1, 0.5}})).choices ==
          std::vector<int64_t>{0, 2});
  }
}

TEST_CASE("reference v2: routed_scaling_factor multiplies the weights after normalize_topk",
          "[reference][v2]") {
  LayerConfig cf;
  cf.num_experts = 4;
  cf.top_k = 2;
  cf.capacity_factor = 0;
  cf.routed_scaling_factor = 2.5;
  const std::vector<std::vector<double>> z = {{2, 1, -1, 0}};
  const double s2 = sigmoid(2), s1 = sigmoid(1);
  cf.normalize_topk = true;
  LayerResult r = run_reference(sigmoid_case(cf, {1}, z));
  CHECK(r.weights[0] == Approx(2.5 * s2 / (s2 + s1)).epsilon(1e-14));
  CHECK(r.weights[1] == Approx(2.5 * s1 / (s2 + s1)).epsilon(1e-14));
  CHECK(r.weights[0] + r.weights[1] == Approx(2.5).epsilon(1e-14));  // scaled after, not before
  cf.normalize_topk = false;
  r = run_reference(sigmoid_case(cf, {1}, z));
  CHECK(r.weights[0] == Approx(2.5 * s2).epsilon(1e-14));
  CHECK(r.weights[1] == Approx(2.5 * s1).epsilon(1e-14));
  cf.normalize_topk = true;
  cf.top_k = 1;
  CHECK(run_reference(sigmoid_case(cf, {1}, z)).weights[0] == 2.5);  // exactly
  // Softmax: Mixtral's normalized pair, scaled.
  cf.top_k = 2;
  cf.routed_scaling_factor = 2.0;
  r = run_reference(logits_case(cf, {1}, z));
  CHECK(r.weights[0] == Approx(2.0 * sigmoid(1)).epsilon(1e-14));
  // The scale reaches the output: a relu expert with f(x) = relu(x) + b2.
  cf.num_experts = 2;
  cf.top_k = 1;
  cf.normalize_topk = false;
  cf.activation = "relu";
  cf.d_hidden = 2;
  LayerCase c = logits_case(cf, {1}, {{1, 0}});
  c.params.experts[0] = {{1, 0, 0, 1}, {0, 0}, {1, 0, 0, 1}, {0.5, 0}, {}};
  CHECK(run_reference(c).output[0] == Approx(2.0 * sigmoid(1) * 1.5).epsilon(1e-14));
}

TEST_CASE("reference v2: capacity_scope = global: one capacity over the group's tokens",
          "[reference][v2]") {
  LayerConfig cf;
  cf.num_experts = 2;
  cf.top_k = 1;
  cf.capacity_factor = 0.5;
  cf.min_capacity = 1;
  cf.capacity_scope = "global";
  CHECK(capacity(cf, 6) == 2);  // capacity() of T for this scope
  SECTION("position: (j, g) ascending over the ranks' tokens in rank order") {
    std::vector<std::vector<double>> logits(6, std::vector<double>{1, 0});
    const LayerResult r = run_reference(logits_case(cf, {4, 0, 2}, logits));
    // C = max(1, ceil(0.5 * 6 / 2)) = 2: the group's first two tokens, both on rank 0
    // (per rank it would be rank 0's and rank 2's first token).
    CHECK(r.kept == bools({1, 1, 0, 0, 0, 0}));
    CHECK(r.expert_kept == std::vector<int64_t>{2, 0});
    cf.capacity_scope = "rank";
    CHECK(run_reference(logits_case(cf, {4, 0, 2}, logits)).kept == bools({1, 0, 0, 0, 1, 0}));
  }
  SECTION("position with k = 2: every first choice of the group before any second choice") {
    cf.top_k = 2;
    cf.capacity_factor = 0.1;  // ceil(0.1 * 3 * 2 / 2) = 1 < min_capacity = 2
    cf.min_capacity = 2;
    const std::vector<std::vector<double>> logits = {{1, 0}, {0, 1}, {2, 0}};
    const LayerResult r = run_reference(logits_case(cf, {1, 2}, logits));
    // As one rank holding all three tokens: expert 0 ranks g0j0, g2j0, g1j1; expert 1 ranks
    // g1j0, g0j1, g2j1.
    CHECK(r.kept == bools({1, 1, 1, 0, 1, 0}));
    cf.capacity_scope = "rank";  // each rank's C_r = 2 keeps everything
    CHECK(run_reference(logits_case(cf, {1, 2}, logits)).dropped_assignments == 0);
  }
  SECTION("score: weight descending over the whole group; the cut's margin") {
    cf.drop_policy = "score";
    std::vector<std::vector<double>> logits;
    for (double v : {1.0, 4.0, 3.0, 0.5, 2.0, 2.5}) logits.push_back({v, 0});
    const LayerResult r = run_reference(logits_case(cf, {3, 3}, logits));
    CHECK(r.kept == bools({0, 1, 1, 0, 0, 0}));  // logits 4 and 3, both on rank 0
    CHECK(r.min_margin == Approx(sigmoid(3) - sigmoid(2.5)).epsilon(1e-12));
    cf.capacity_scope = "rank";  // per rank C_r = 1: 4 on rank 0, 2.5 on rank 1
    CHECK(run_reference(logits_case(cf, {3, 3}, logits)).kept == bools({0, 1, 0, 0, 0, 1}));
  }
  SECTION("T = 0 and dropless") {
    CHECK(capacity(cf, 0) == 0);
    cf.capacity_factor = 0;
    CHECK_FALSE(capacity(cf, 6).has_value());
    std::vector<std::vector<double>> logits(6, std::vector<double>{1, 0});
    CHECK(run_reference(logits_case(cf, {4, 0, 2}, logits)).dropped_assignments == 0);
  }
}

TEST_CASE("reference v2: with capacity_scope = global the same batch gives the same results on "
          "P = 1, 2 and 4 source ranks",
          "[reference][v2]") {
  const auto policy = GENERATE(as<std::string>{}, "position", "score");
  INFO(policy);
  CaseSpec spec = deepseek_v3_like_spec();
  spec.config.drop_policy = policy;
  spec.tokens_per_rank = {24};
  const LayerCase one = make_case(spec);
  const LayerResult r1 = run_reference(one);
  REQUIRE(r1.dropped_assignments > 0);
  REQUIRE(r1.grads);
  for (const std::vector<int64_t>& split :
       {std::vector<int64_t>{11, 13}, std::vector<int64_t>{5, 0, 12, 7}}) {
    LayerCase c = one;
    c.tokens_per_rank = split;
    const LayerResult r = run_reference(c);
    INFO("P = " << split.size());
    CHECK(r.choices == r1.choices);
    CHECK(r.kept == r1.kept);
    CHECK(r.expert_counts == r1.expert_counts);
    CHECK(r.expert_kept == r1.expert_kept);
    CHECK(r.dropped_tokens == r1.dropped_tokens);
    CHECK(r.output == r1.output);
    CHECK(r.aux_loss == r1.aux_loss);
    CHECK(r.z_loss == r1.z_loss);
    CHECK(r.score_bias_updated == r1.score_bias_updated);
    REQUIRE(r.grads);
    CHECK(r.grads->input == r1.grads->input);
    CHECK(r.grads->params.gate == r1.grads->params.gate);
    for (size_t e = 0; e < 16; ++e) {
      CHECK(r.grads->params.experts[e].w1 == r1.grads->params.experts[e].w1);
      CHECK(r.grads->params.experts[e].w3 == r1.grads->params.experts[e].w3);
    }
    CHECK(r.grads->params.shared_expert->w2 == r1.grads->params.shared_expert->w2);
    // Per source rank, the same split keeps a different set: the scope is what makes P vanish.
    c.config.capacity_scope = "rank";
    CHECK(run_reference(c).kept != r1.kept);
  }
}

TEST_CASE("reference v2: the shared expert adds f_s(x) to every token, also an all-dropped one",
          "[reference][v2]") {
  LayerConfig cf;
  cf.num_experts = 2;
  cf.top_k = 2;
  cf.capacity_factor = 0.1;
  cf.min_capacity = 1;
  cf.activation = "relu";
  cf.d_hidden = 2;
  cf.d_shared_hidden = 3;
  // The layout of the all-dropped test above: token 1 loses both assignments.
  LayerCase c = logits_case(cf, {3}, {{1, 0}, {1, 0}, {0, 1}});
  for (size_t e = 0; e < 2; ++e) {
    c.params.experts[e] = {{1, 0, 0, 1}, {0, 0}, {1, 0, 0, 1}, {static_cast<double>(e + 1), 0}, {}};
  }
  // f_s(x) = relu(x) + (0.5, -0.25), through a third hidden unit that never fires.
  c.params.shared_expert = ExpertParams{{1, 0, 0, 1, 0, 0}, {0, 0, -1},
                                        {1, 0, 0, 0, 1, 0}, {0.5, -0.25}, {}};
  const LayerResult r = run_reference(c);
  CHECK(r.kept == bools({1, 0, 0, 0, 1, 0}));
  CHECK(r.dropped_tokens == 1);  // the statistics count routed assignments only
  const size_t d = 2;
  CHECK(r.output[1 * d + 0] == 1.5);
  CHECK(r.output[1 * d + 1] == -0.25);
  CHECK(r.output[0] == Approx(sigmoid(1) * 2.0 + 1.5).epsilon(1e-14));
  CHECK(r.output[1] == -0.25);
  CHECK(r.output[2 * d + 0] == Approx(sigmoid(1) * 2.0 + 0.5).epsilon(1e-14));
  CHECK(r.output[2 * d + 1] == Approx(sigmoid(1) * 1.0 + 0.75).epsilon(1e-14));

  SECTION("its gradient is the sum over every token") {
    c.grad_output = {1, 0, 1, 0, 0, 1};
    const LayerResult g = run_reference(c);
    REQUIRE(g.grads);
    REQUIRE(g.grads->params.shared_expert);
    const ExpertParams& gs = *g.grads->params.shared_expert;
    CHECK(gs.b2 == std::vector<double>{2, 1});  // Σ_t dy_t
    CHECK(gs.b1 == std::vector<double>{2, 1, 0});  // relu'(1) for x0 of tokens 0, 1; x1 of 2
    // Token 1 (all dropped): its dX has the shared path, (1, 0), plus the router's.
    const double dx_router = g.grads->input[1 * d + 0] - 1.0;
    c.params.shared_expert->w1 = std::vector<double>(6, 0.0);  // f_s constant now
    c.params.shared_expert->w2 = std::vector<double>(6, 0.0);
    CHECK(run_reference(c).grads->input[1 * d + 0] == Approx(dx_router).margin(1e-15));
  }
}

TEST_CASE("reference v2: a swiglu shared expert", "[reference][v2]") {
  LayerConfig cf;
  cf.num_experts = 1;
  cf.top_k = 1;
  cf.d_model = 1;
  cf.d_hidden = 1;
  cf.d_shared_hidden = 1;
  cf.activation = "swiglu";
  cf.capacity_factor = 0;
  LayerCase c;
  c.config = cf;
  c.params.gate = {1.0};
  c.params.experts = {ExpertParams{{0.0}, {}, {0.0}, {}, {0.0}}};  // routed output 0
  c.params.shared_expert = ExpertParams{{1.0}, {}, {1.0}, {}, {2.0}};
  c.tokens_per_rank = {1};
  c.input = {1.0};
  CHECK(run_reference(c).output[0] == Approx(0.7310585786300049 * 2.0).epsilon(1e-15));
}

TEST_CASE("reference v2: the selection-bias update b + γ·sign(c̄ − c_e)", "[reference][v2]") {
  LayerConfig cf;
  cf.num_experts = 4;
  cf.gate = "sigmoid";
  cf.bias_update_rate = 0.1;
  SECTION("updated_score_bias by hand, sign(0) = 0") {
    // c̄ = 2: expert 0 is over (down), expert 1 under (up), experts 2 and 3 exactly at it.
    const std::vector<double> b =
        updated_score_bias(cf, {0.5, 0, 0, -0.5}, std::vector<int64_t>{3, 1, 2, 2});
    REQUIRE(b.size() == 4);
    CHECK(b[0] == Approx(0.4).epsilon(1e-15));
    CHECK(b[1] == Approx(0.1).epsilon(1e-15));
    CHECK(b[2] == 0.0);
    CHECK(b[3] == -0.5);
    // c̄ = 7/3 is not an integer: no expert sits at it. An absent bias counts as zeros.
    cf.num_experts = 3;
    CHECK(updated_score_bias(cf, {}, std::vector<int64_t>{3, 2, 2}) ==
          std::vector<double>{-0.1, 0.1, 0.1});
    CHECK(updated_score_bias(cf, {}, std::vector<int64_t>{0, 0, 0}) ==
          std::vector<double>{0, 0, 0});
  }
  SECTION("γ = 0 returns the bias unchanged; softmax has none") {
    cf.bias_update_rate = 0;
    CHECK(updated_score_bias(cf, {0.5, 0, 0, -0.5}, std::vector<int64_t>{3, 1, 2, 2}) ==
          std::vector<double>{0.5, 0, 0, -0.5});
    CHECK(updated_score_bias(cf, {}, std::vector<int64_t>{3, 1, 2, 2}) ==
          std::vector<double>(4, 0.0));
    cf.gate = "softmax";
    CHECK(updated_score_bias(cf, {}, std::vector<int64_t>{3, 1, 2, 2}).empty());
    cf.gate = "sigmoid";
    CHECK_THROWS_AS(updated_score_bias(cf, {}, std::vector<int64_t>{3, 1}),
                    std::invalid_argument);
  }
  SECTION("in the result: from this forward's counts before dropping") {
    cf.top_k = 1;
    cf.bias_update_rate = 0.125;
    cf.capacity_factor = 0.1;
    cf.min_capacity = 1;
    // Per rank (C_r = 1) nothing drops; over the group (C = 1) expert 0 drops one.
    LayerCase c = sigmoid_case(cf, {1, 3}, {{3, 0, 0, 0}, {3, 0, 0, 0}, {0, 3, 0, 0},
                                            {0, 0, 0, 3}});
    c.params.score_bias = {0.25, 0.25, 0, 0};  // not enough to move any choice
    const LayerResult r = run_reference(c);
    CHECK(r.expert_counts == std::vector<int64_t>{2, 1, 0, 1});
    CHECK(r.expert_kept == std::vector<int64_t>{2, 1, 0, 1});
    // c̄ = 1: expert 0 down, expert 2 up, experts 1 and 3 stay (exact in binary).
    CHECK(r.score_bias_updated == std::vector<double>{0.125, 0.25, 0.125, 0});
    c.config.capacity_scope = "global";  // C = 1: expert 0 drops one, the counts do not change
    const LayerResult g = run_reference(c);
    CHECK(g.expert_kept == std::vector<int64_t>{1, 1, 0, 1});
    CHECK(g.score_bias_updated == r.score_bias_updated);
    c.config.bias_update_rate = 0;
    CHECK(run_reference(c).score_bias_updated == c.params.score_bias);
    c.params.score_bias.clear();
    CHECK(run_reference(c).score_bias_updated == std::vector<double>(4, 0.0));
  }
}

TEST_CASE("reference v2: aux loss with the sigmoid gate normalizes the scores per token",
          "[reference][v2]") {
  LayerConfig cf;
  cf.num_experts = 2;
  cf.top_k = 1;
  cf.capacity_factor = 0;
  cf.aux_loss_coef = 0.1;
  cf.z_loss_coef = 0.2;
  // s = (1/2, 1/2) -> p = (1/2, 1/2); s = (3/4, 1/2) -> p = (3/5, 2/5). Both choose expert 0.
  const LayerResult r = run_reference(sigmoid_case(cf, {1, 1}, {{0, 0}, {std::log(3.0), 0}}));
  CHECK(r.choices == std::vector<int64_t>{0, 0});
  // f = (1, 0), P_0 = (1/2 + 3/5) / 2 = 0.55.
  CHECK(r.aux_loss == Approx(0.1 * 2.0 * 0.55).epsilon(1e-14));
  // z-loss is still the logsumexp of the logits: ln 2 and ln 4.
  const double ln2 = std::log(2.0);
  CHECK(r.z_loss == Approx(0.2 * 2.5 * ln2 * ln2).epsilon(1e-14));
}

TEST_CASE("reference v2: normalize_topk with k = 1 and the sigmoid gate: router gradient exactly "
          "zero",
          "[reference][v2]") {
  CaseSpec spec = tiny_spec("gelu", true, 1, "position");
  spec.config.gate = "sigmoid";
  spec.config.routed_scaling_factor = 2.5;
  spec.with_score_bias = true;
  spec.config.aux_loss_coef = 0;
  spec.config.z_loss_coef = 0;
  const LayerResult r = run_reference(make_case(spec));
  REQUIRE(r.grads);
  const auto& g = r.grads->params.gate;
  CHECK(std::all_of(g.begin(), g.end(), [](double v) { return v == 0.0; }));
  CHECK(r.grads->params.score_bias.empty());
  spec.config.normalize_topk = false;
  const LayerResult u = run_reference(make_case(spec));
  CHECK(std::any_of(u.grads->params.gate.begin(), u.grads->params.gate.end(),
                    [](double v) { return v != 0.0; }));
}

TEST_CASE("reference v2: malformed version-2 cases are rejected", "[reference][v2]") {
  CaseSpec spec = deepseek_v3_like_spec();
  const LayerCase good = make_case(spec);
  REQUIRE_NOTHROW(run_reference(good));
  std::vector<std::pair<std::string, LayerCase>> bad;
  const auto add = [&](const std::string& why, const auto& edit) {
    LayerCase c = good;
    edit(c);
    bad.emplace_back(why, std::move(c));
  };
  add("gate name", [](LayerCase& c) { c.config.gate = "tanh"; });
  add("capacity_scope name", [](LayerCase& c) { c.config.capacity_scope = "node"; });
  add("n_group does not divide E", [](LayerCase& c) { c.config.n_group = 3; });
  add("n_group 0", [](LayerCase& c) { c.config.n_group = 0; });
  add("topk_group > n_group", [](LayerCase& c) { c.config.topk_group = 5; });
  add("topk_group < 0", [](LayerCase& c) { c.config.topk_group = -1; });
  add("k > M E / G", [](LayerCase& c) {
    c.config.topk_group = 1;  // 4 selectable experts
    c.config.top_k = 5;
  });
  add("scaling 0", [](LayerCase& c) { c.config.routed_scaling_factor = 0; });
  add("scaling < 0", [](LayerCase& c) { c.config.routed_scaling_factor = -1; });
  add("scaling inf", [](LayerCase& c) {
    c.config.routed_scaling_factor = std::numeric_limits<double>::infinity();
  });
  add("scaling NaN", [](LayerCase& c) {
    c.config.routed_scaling_factor = std::numeric_limits<double>::quiet_NaN();
  });
  add("bias rate < 0", [](LayerCase& c) { c.config.bias_update_rate = -0.1; });
  add("bias rate NaN", [](LayerCase& c) {
    c.config.bias_update_rate = std::numeric_limits<double>::quiet_NaN();
  });
  add("bias rate with softmax", [](LayerCase& c) {
    c.config.gate = "softmax";
    c.params.score_bias.clear();
  });
  add("selection bias with softmax", [](LayerCase& c) {
    c.config.gate = "softmax";
    c.config.bias_update_rate = 0;
  });
  add("selection bias size", [](LayerCase& c) { c.params.score_bias.pop_back(); });
  add("selection bias NaN", [](LayerCase& c) {
    c.params.score_bias[3] = std::numeric_limits<double>::quiet_NaN();
  });
  add("shared expert without d_shared_hidden", [](LayerCase& c) { c.config.d_shared_hidden = 0; });
  add("d_shared_hidden without shared expert", [](LayerCase& c) {
    c.params.shared_expert.reset();
  });
  add("d_shared_hidden < 0", [](LayerCase& c) {
    c.config.d_shared_hidden = -1;
    c.params.shared_expert.reset();
  });
  add("shared expert shape", [](LayerCase& c) { c.config.d_shared_hidden = 3; });
  add("shared expert w3 missing for swiglu", [](LayerCase& c) {
    c.params.shared_expert->w3.clear();
  });
  add("shared expert biases with swiglu", [](LayerCase& c) {
    c.params.shared_expert->b2.assign(5, 0.0);
  });
  for (const auto& [why, c] : bad) {
    INFO(why);
    CHECK_THROWS_AS(run_reference(c), std::invalid_argument);
  }
  // Boundaries that are legal.
  LayerCase c = good;
  c.config.topk_group = 1;
  c.config.top_k = 4;  // = 1 * 16 / 4
  CHECK_NOTHROW(run_reference(c));
  c.config.n_group = 16;  // one expert per group
  c.config.topk_group = 4;
  CHECK_NOTHROW(run_reference(c));
  CHECK_THROWS_AS(make_case([] {
                    CaseSpec s;
                    s.tokens_per_rank = {2};
                    s.with_score_bias = true;  // softmax
                    return s;
                  }()),
                  std::invalid_argument);
}

TEST_CASE("reference v2: T = 0 with every version-2 feature on", "[reference][v2]") {
  CaseSpec spec = deepseek_v3_like_spec();
  spec.tokens_per_rank = {0, 0};
  const LayerCase c = make_case(spec);
  const LayerResult r = run_reference(c);
  CHECK(r.output.empty());
  CHECK(r.aux_loss == 0.0);
  CHECK(r.z_loss == 0.0);
  CHECK(r.expert_counts == std::vector<int64_t>(16, 0));
  // Every count equals the mean 0: sign(0) = 0 leaves the bias as it was.
  CHECK(r.score_bias_updated == c.params.score_bias);
  REQUIRE(r.grads);
  REQUIRE(r.grads->params.shared_expert);
  const ExpertParams& g = *r.grads->params.shared_expert;
  CHECK(g.w1.size() == 4u * 5u);
  CHECK(g.w3.size() == 4u * 5u);
  CHECK(std::all_of(g.w2.begin(), g.w2.end(), [](double v) { return v == 0.0; }));
}

// ---------------------------------------------------------------------------------------------
// The generator on version-2 configs.

TEST_CASE("reference v2: make_case draws the selection bias and the shared expert",
          "[reference][v2]") {
  CaseSpec spec;
  spec.tokens_per_rank = {40, 0, 25, 31};
  spec.seed = 7;
  spec.config.gate = "sigmoid";
  spec.config.n_group = 4;
  spec.config.topk_group = 2;
  spec.config.routed_scaling_factor = 2.5;
  spec.config.capacity_factor = 1.0;  // drops in every variant
  const auto activation = GENERATE(as<std::string>{}, "gelu", "swiglu");
  const auto scope = GENERATE(as<std::string>{}, "rank", "global");
  const auto policy = GENERATE(as<std::string>{}, "position", "score");
  spec.config.activation = activation;
  spec.config.capacity_scope = scope;
  spec.config.drop_policy = policy;
  INFO(activation << " " << scope << " " << policy);
  const CaseSpec plain = spec;
  spec.with_score_bias = true;
  spec.config.d_shared_hidden = 12;

  const LayerCase a = make_case(spec);
  const LayerCase b = make_case(spec);
  const auto ta = case_tensors(a), tb = case_tensors(b);
  REQUIRE(ta.size() == tb.size());
  for (size_t i = 0; i < ta.size(); ++i) CHECK(*ta[i] == *tb[i]);
  for (const auto* v : ta) CHECK(all_float(*v));
  REQUIRE(a.params.score_bias.size() == 8u);
  CHECK(std::all_of(a.params.score_bias.begin(), a.params.score_bias.end(),
                    [](double v) { return v != 0.0 && std::abs(v) < 0.5; }));
  REQUIRE(a.params.shared_expert);
  const bool swiglu = activation == "swiglu";
  CHECK(a.params.shared_expert->w1.size() == 12u * 16u);
  CHECK(a.params.shared_expert->w2.size() == 16u * 12u);
  CHECK(a.params.shared_expert->b1.size() == (swiglu ? 0u : 12u));
  CHECK(a.params.shared_expert->w3.size() == (swiglu ? 12u * 16u : 0u));

  const LayerResult r = run_reference(a);
  CHECK(r.min_margin >= kMinMargin);
  CHECK(r.dropped_assignments > 0);
  // The bias is large enough to change choices: the same case without it routes differently.
  LayerCase unbiased = a;
  unbiased.params.score_bias.clear();
  CHECK(run_reference(unbiased).choices != r.choices);
  // The version-2 tensors come from their own streams: the version-1 draws do not move.
  const LayerCase p = make_case(plain);
  CHECK(p.params.gate == a.params.gate);
  CHECK(p.params.experts[5].w2 == a.params.experts[5].w2);
  CHECK(p.grad_output == a.grad_output);
}

TEST_CASE("reference v2: make_case clears the group and global-cut margins on large batches",
          "[reference][v2]") {
  CaseSpec spec;
  spec.config.num_experts = 64;
  spec.config.n_group = 8;
  spec.config.topk_group = 3;
  spec.config.top_k = 6;
  spec.config.d_model = 8;
  spec.config.d_hidden = 4;
  spec.config.gate = "sigmoid";
  spec.config.normalize_topk = true;
  spec.config.routed_scaling_factor = 2.5;
  spec.config.drop_policy = "score";
  spec.config.capacity_scope = "global";
  spec.config.capacity_factor = 1.0;
  spec.with_score_bias = true;
  spec.tokens_per_rank = {3000, 5000};
  spec.with_grad_output = false;
  const LayerCase c = make_case(spec);
  const LayerResult r = run_reference(c);
  CHECK(r.min_margin >= kMinMargin);
  CHECK(r.dropped_assignments > 0);
}

// ---------------------------------------------------------------------------------------------
// Finite differences of L for the version-2 configs.

TEST_CASE("reference v2: backward matches finite differences", "[reference][v2][fd]") {
  CaseSpec spec = tiny_spec("gelu", false, 2, "position");
  LayerConfig& cf = spec.config;
  SECTION("sigmoid with a selection bias") {
    cf.gate = "sigmoid";
    spec.with_score_bias = true;
  }
  SECTION("sigmoid, normalize_topk k = 2, scaled, score policy") {
    cf.gate = "sigmoid";
    spec.with_score_bias = true;
    cf.normalize_topk = true;
    cf.routed_scaling_factor = 2.5;
    cf.drop_policy = "score";
  }
  SECTION("sigmoid, normalize_topk k = 1, scaled") {
    cf.gate = "sigmoid";
    cf.normalize_topk = true;
    cf.top_k = 1;
    cf.routed_scaling_factor = 2.5;
  }
  SECTION("softmax, scaled without normalization") {
    cf.routed_scaling_factor = 2.5;
    cf.drop_policy = "score";
  }
  SECTION("softmax, groups") {
    cf.num_experts = 8;
    cf.n_group = 4;
    cf.topk_group = 2;
    cf.normalize_topk = true;
  }
  SECTION("sigmoid with bias, groups, k = 3") {
    cf.gate = "sigmoid";
    spec.with_score_bias = true;
    cf.num_experts = 8;
    cf.n_group = 4;
    cf.topk_group = 2;
    cf.top_k = 3;
  }
  SECTION("shared expert, gelu") { cf.d_shared_hidden = 3; }
  SECTION("shared expert, swiglu, sigmoid normalized") {
    cf.activation = "swiglu";
    cf.d_shared_hidden = 3;
    cf.gate = "sigmoid";
    cf.normalize_topk = true;
  }
  SECTION("global scope, position, an empty rank") {
    cf.capacity_scope = "global";
    spec.tokens_per_rank = {3, 0, 4};
  }
  SECTION("global scope, score, sigmoid") {
    cf.capacity_scope = "global";
    cf.drop_policy = "score";
    cf.gate = "sigmoid";
    spec.with_score_bias = true;
  }
  const LayerCase c = make_case(spec);
  REQUIRE(run_reference(c).dropped_assignments > 0);
  check_gradients(c);
}

TEST_CASE("reference v2: backward of a DeepSeek-V3-like layer matches finite differences",
          "[reference][v2][fd]") {
  CaseSpec spec = deepseek_v3_like_spec();
  const auto policy = GENERATE(as<std::string>{}, "position", "score");
  spec.config.drop_policy = policy;
  INFO(policy);
  SECTION("with drops") {
    const LayerCase c = make_case(spec);
    const LayerResult r = run_reference(c);
    REQUIRE(r.dropped_assignments > 0);
    CHECK(r.dropped_tokens < 11);
    check_gradients(c);
  }
  SECTION("dropless, as DeepSeek-V3 runs") {
    spec.config.capacity_factor = 0;
    const LayerCase c = make_case(spec);
    REQUIRE(run_reference(c).dropped_assignments == 0);
    check_gradients(c);
  }
}
