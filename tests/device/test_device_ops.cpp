// The data-path ops (runtime/device/, experts/device/) run through the host launcher: the very
// bodies a CUDA build launches as kernels, checked against the float64 reference (tests/reference)
// and against the host functions of the layer (which must agree with them, bit for bit where they
// compute in the same order).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <type_traits>
#include <vector>

#include "experts/activation_kernels.hpp"
#include "experts/gemm.hpp"
#include "experts/device/activation_ops.hpp"
#include "experts/device/gemm_column_major.hpp"
#include "experts/device/launch_host.hpp"
#include "runtime/device/exchange_bytes.hpp"
#include "runtime/device/expert_row_map.hpp"
#include "runtime/device/permute_ops.hpp"
#include "runtime/device/router_ops.hpp"
#include "runtime/dispatch_plan.hpp"
#include "runtime/local_failure.hpp"
#include "runtime/permute.hpp"
#include "runtime/router.hpp"
#include "tests/reference/reference_internal.hpp"
#include "tests/support/case_bridge.hpp"

using namespace moe;

namespace {

std::vector<float> to_float(const std::vector<double>& v) { return {v.begin(), v.end()}; }

std::vector<float> random_values(std::size_t n, std::uint64_t seed, float scale = 1.0f) {
  std::mt19937_64 gen(seed);
  std::uniform_real_distribution<float> dist(-scale, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(gen);
  return v;
}

double relative_error(std::span<const float> actual, std::span<const double> expected) {
  test::ErrorSums sums;
  sums.add(actual, expected);
  return sums.relative();
}

// The host activation kernels are compiled for AVX2/AVX-512 with FMA (experts/activation_kernels.cpp),
// where the compiler fuses multiply-adds, so they agree with the scalar bodies to rounding only.
bool close_to_host(std::span<const float> op, std::span<const float> host) {
  return relative_error(op, std::vector<double>(host.begin(), host.end())) <= 1e-6;
}

// The router ops on logits z (fp32), as the device path runs them.
struct RouterRun {
  std::vector<float> scores, selection, group_score, logsumexp, score_sum, weight;
  std::vector<std::int32_t> expert;
  std::vector<double> prob_sum;
  std::vector<std::int64_t> counts;
  double lse_sq_sum = 0;
};

RouterRun run_router_ops(const MoeConfig& config, std::vector<float> logits,
                         const std::vector<float>& bias, std::int64_t tokens) {
  const std::int64_t experts = config.num_experts, k = config.top_k;
  const auto n = [](std::int64_t v) { return static_cast<std::size_t>(v); };
  RouterRun r;
  r.scores.resize(n(tokens * experts));
  r.selection.resize(n(tokens * experts));
  r.group_score.resize(n(tokens * config.n_group));
  r.logsumexp.resize(n(tokens));
  r.score_sum.resize(n(tokens));
  r.weight.resize(n(tokens * k));
  r.expert.resize(n(tokens * k));
  r.prob_sum.resize(n(experts));
  r.counts.resize(n(experts));
  const bool sigmoid = config.gate == GateKind::sigmoid;
  device::launch_host(tokens, device::RouteTokenOp{router_dims(config), logits.data(), bias.data(),
                                                   r.scores.data(), r.selection.data(),
                                                   r.group_score.data(), r.logsumexp.data(),
                                                   r.score_sum.data(), r.expert.data(),
                                                   r.weight.data()});
  device::launch_host(experts, device::ProbSumOp{tokens, experts, sigmoid, r.scores.data(),
                                                 r.score_sum.data(), r.prob_sum.data()});
  device::launch_host(experts, device::CountOp{tokens * k, r.expert.data(), r.counts.data()});
  device::launch_host(1, device::LogsumexpSquareSumOp{tokens, r.logsumexp.data(), &r.lse_sq_sum});
  return r;
}

// The forward's routing of the reference, for one rank holding every token of the case.
struct Expected {
  ref::LayerCase lc;
  ref::detail::Routing routing;
  std::vector<double> prob_sum;
  double lse_sq_sum = 0;
};

Expected expected_routing(const ref::CaseSpec& spec) {
  Expected e{ref::make_case(spec), {}, {}, 0};
  e.routing = ref::detail::route(e.lc);
  const auto experts = static_cast<std::size_t>(spec.config.num_experts);
  e.prob_sum.assign(experts, 0.0);
  for (std::size_t i = 0; i < e.routing.probs.size(); ++i) e.prob_sum[i % experts] += e.routing.probs[i];
  for (double lse : e.routing.lse) e.lse_sq_sum += lse * lse;
  return e;
}

void check_routing(const Expected& e, std::span<const std::int32_t> expert,
                   std::span<const float> weight, std::span<const double> prob_sum,
                   std::span<const std::int64_t> counts, std::span<const float> logsumexp,
                   double lse_sq_sum) {
  const auto assignments = e.routing.choices.size();
  CHECK(std::equal(e.routing.choices.begin(), e.routing.choices.end(), expert.begin()));
  CHECK(relative_error(weight.first(assignments), e.routing.weights) <= 1e-5);
  CHECK(std::equal(e.routing.counts.begin(), e.routing.counts.end(), counts.begin()));
  const std::vector<float> prob_sum_f(prob_sum.begin(), prob_sum.end());
  CHECK(relative_error(prob_sum_f, e.prob_sum) <= 1e-5);
  CHECK(relative_error(logsumexp.first(e.routing.lse.size()), e.routing.lse) <= 1e-5);
  CHECK(std::abs(lse_sq_sum - e.lse_sq_sum) <= 1e-5 * std::max(1.0, e.lse_sq_sum));
}

// One rank holding all of a standard case's tokens (tests/support/case_bridge.hpp).
std::vector<test::NamedCase> one_rank_cases() { return test::standard_cases(1); }

}  // namespace

TEST_CASE("router ops match the float64 reference, and the host router is the same ops",
          "[device-host][router]") {
  for (const auto& named : one_rank_cases()) {
    INFO("case " << named.name);
    const Expected e = expected_routing(named.spec);
    const MoeConfig config = test::to_config(e.lc.config);
    const std::int64_t tokens = e.lc.tokens_per_rank[0];
    const std::vector<float> bias = e.lc.params.score_bias.empty()
                                        ? std::vector<float>(static_cast<std::size_t>(config.num_experts), 0.0f)
                                        : to_float(e.lc.params.score_bias);

    // The ops alone, on the reference's logits rounded to fp32.
    const RouterRun ops = run_router_ops(config, to_float(e.routing.logits), bias, tokens);
    check_routing(e, ops.expert, ops.weight, ops.prob_sum, ops.counts, ops.logsumexp, ops.lse_sq_sum);

    // The host router, logits from its own GEMM.
    RouterOutput host;
    route(config, to_float(e.lc.params.gate), bias, to_float(e.lc.input), tokens, host);
    check_routing(e, host.expert, host.weight, host.prob_sum, host.counts, host.logsumexp,
                  host.logsumexp_sq_sum);
  }
}

TEST_CASE("top_k_indices keeps ties in index order and skips masked values", "[device-host][router]") {
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<float> v = {0.5f, -inf, 0.9f, 0.5f, 0.9f, 0.1f};
  std::vector<std::int32_t> top(4);
  device::top_k_indices(v.data(), 6, 4, top.data());
  CHECK(top == std::vector<std::int32_t>{2, 4, 0, 3});
  std::vector<std::int32_t> all(6);
  device::top_k_indices(v.data(), 6, 6, all.data());
  CHECK(all == std::vector<std::int32_t>{2, 4, 0, 3, 5, 1});
}

namespace {

// The router's scalar loss for one token with the choices fixed, in double: the selected weights
// against their upstream gradient, the aux loss's p against its constant gradient, and the z-loss
// (z_scale/2 · lse², whose gradient is z_scale · lse · softmax). RouteBackwardTokenOp is its
// gradient.
double token_loss(const device::RouterDims& dims, std::span<const double> z,
                  std::span<const std::int32_t> chosen, std::span<const float> dw,
                  std::span<const double> aux_grad, double z_scale) {
  const auto num = z.size();
  std::vector<double> s(num);
  const double max_z = *std::max_element(z.begin(), z.end());
  double exp_sum = 0;
  for (double v : z) exp_sum += std::exp(v - max_z);
  const double lse = max_z + std::log(exp_sum);
  double s_sum = 0;
  for (std::size_t e = 0; e < num; ++e) {
    s[e] = dims.sigmoid ? 1.0 / (1.0 + std::exp(-z[e])) : std::exp(z[e] - lse);
    s_sum += s[e];
  }
  double selected = 0;
  for (auto c : chosen) selected += s[static_cast<std::size_t>(c)];
  double loss = 0.5 * z_scale * lse * lse;
  for (std::size_t j = 0; j < chosen.size(); ++j) {
    double w = s[static_cast<std::size_t>(chosen[j])];
    if (dims.normalize_topk) w /= selected;
    loss += dw[j] * w * dims.routed_scaling_factor;
  }
  for (std::size_t e = 0; e < num; ++e) loss += aux_grad[e] * (dims.sigmoid ? s[e] / s_sum : s[e]);
  return loss;
}

}  // namespace

TEST_CASE("router backward op is the gradient of the router's loss (finite differences in double)",
          "[device-host][router]") {
  for (const auto& named : one_rank_cases()) {
    INFO("case " << named.name);
    const Expected e = expected_routing(named.spec);
    const MoeConfig config = test::to_config(e.lc.config);
    const std::int64_t tokens = std::min<std::int64_t>(e.lc.tokens_per_rank[0], 6);
    const std::int64_t experts = config.num_experts, k = config.top_k;
    const std::vector<float> logits = to_float(e.routing.logits);
    const std::vector<float> bias(static_cast<std::size_t>(experts), 0.0f);
    const RouterRun fwd = run_router_ops(config, logits, bias, tokens);

    const std::vector<float> d_weight = random_values(static_cast<std::size_t>(tokens * k), 7);
    std::vector<std::int64_t> counts(static_cast<std::size_t>(experts));
    for (std::int64_t i = 0; i < experts; ++i) counts[static_cast<std::size_t>(i)] = (i * 7) % 5;
    const double aux_scale = 0.03, z_scale = 0.02;
    std::vector<float> d_logits(static_cast<std::size_t>(tokens * experts));
    const device::RouterDims dims = router_dims(config);
    device::launch_host(tokens, device::RouteBackwardTokenOp{
        dims, aux_scale, z_scale, counts.data(), fwd.scores.data(), logits.data(),
        fwd.score_sum.data(), fwd.logsumexp.data(), fwd.expert.data(), d_weight.data(),
        d_logits.data()});

    std::vector<double> aux_grad(static_cast<std::size_t>(experts));
    for (std::size_t i = 0; i < aux_grad.size(); ++i) aux_grad[i] = aux_scale * static_cast<double>(counts[i]);
    for (std::int64_t t = 0; t < tokens; ++t) {
      std::vector<double> z(logits.begin() + t * experts, logits.begin() + (t + 1) * experts);
      const std::span<const std::int32_t> chosen(fwd.expert.data() + t * k, static_cast<std::size_t>(k));
      const std::span<const float> dw(d_weight.data() + t * k, static_cast<std::size_t>(k));
      std::vector<double> numeric(z.size());
      for (std::size_t i = 0; i < z.size(); ++i) {
        const double h = 1e-6, saved = z[i];
        z[i] = saved + h;
        const double up = token_loss(dims, z, chosen, dw, aux_grad, z_scale);
        z[i] = saved - h;
        const double down = token_loss(dims, z, chosen, dw, aux_grad, z_scale);
        z[i] = saved;
        numeric[i] = (up - down) / (2 * h);
      }
      const std::span<const float> analytic(d_logits.data() + t * experts, z.size());
      CHECK(relative_error(analytic, numeric) <= 1e-4);
    }
  }
}

TEST_CASE("selection-bias update op matches the reference", "[device-host][router]") {
  ref::LayerConfig rc;
  rc.num_experts = 6;
  rc.gate = "sigmoid";
  rc.bias_update_rate = 0.125;
  const std::vector<double> bias = {0.5, -0.25, 0, 1, 0.75, -1};
  const std::vector<std::int64_t> counts = {3, 5, 4, 4, 0, 8};  // mean 4: one expert exactly at it
  const std::vector<double> expected = ref::updated_score_bias(rc, bias, counts);
  std::vector<float> b = to_float(bias);
  device::launch_host(6, device::SelectionBiasUpdateOp{6, 0.125, counts.data(), b.data()});
  CHECK(relative_error(b, expected) == 0.0);
  std::vector<float> host = to_float(bias);
  update_selection_bias(host, counts, 0.125);
  CHECK(host == b);
}

namespace {

// A plan with drops, as rank 0 of 2 sees its source side.
struct PlannedCase {
  MoeConfig config;
  RouterOutput routing;
  DispatchPlan plan;
  std::int64_t tokens = 0;
};

PlannedCase planned_case(const char* name) {
  for (const auto& named : one_rank_cases()) {
    if (named.name != name) continue;
    const ref::LayerCase lc = ref::make_case(named.spec);
    PlannedCase p{test::to_config(lc.config), {}, {}, lc.tokens_per_rank[0]};
    route(p.config, to_float(lc.params.gate), {}, to_float(lc.input), p.tokens, p.routing);
    rank_assignments(p.config, p.routing.expert, p.routing.weight, p.tokens, p.plan);
    build_plan(p.config, 2, 0, p.routing.expert, p.tokens, 1, -1, {}, p.plan);
    return p;
  }
  FAIL("no standard case " << name);
  return {};
}

// Rows in the wire format whose values are `Wire` (float or device::WireBf16), as the host
// functions of runtime/permute.hpp read them.
template <class Wire>
WireRows wire_rows(std::vector<Wire>& v, std::int64_t width) {
  return {reinterpret_cast<std::byte*>(v.data()), width,
          std::is_same_v<Wire, float> ? WireFormat::fp32 : WireFormat::bf16};
}

template <class Wire>
Wire wire_value(float v) {
  Wire w;
  device::to_wire(v, w);
  return w;
}

template <class Wire>
std::vector<Wire> to_wire_rows(const std::vector<float>& v) {
  std::vector<Wire> out(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) out[i] = wire_value<Wire>(v[i]);
  return out;
}

}  // namespace

TEMPLATE_TEST_CASE("permute and combine ops match the host functions bit for bit and the float64 sums",
                   "[device-host][permute]", float, device::WireBf16) {
  using Wire = TestType;
  for (const char* name : {"tight_capacity", "score_policy", "top_all"}) {
    INFO("case " << name);
    PlannedCase p = planned_case(name);
    const DispatchPlan& plan = p.plan;
    const std::int64_t width = p.config.d_model, k = p.config.top_k, tokens = p.tokens;
    const std::int64_t rows = plan.num_send_rows();
    REQUIRE((plan.dropped_assignments > 0) == (std::string(name) != "top_all"));
    const auto size = [](std::int64_t n) { return static_cast<std::size_t>(n); };
    const std::vector<float> x = random_values(size(tokens * width), 1);
    // The rows that come back are already in the wire format.
    std::vector<Wire> back = to_wire_rows<Wire>(random_values(size(rows * width), 2));
    const std::vector<float> dy = random_values(size(tokens * width), 3);
    const std::vector<float>& weight = p.routing.weight;

    // Gather: each row rounded into the wire format.
    std::vector<Wire> send(size(rows * width)), send_host(send.size());
    device::launch_host(rows * width, device::GatherRowsOp<Wire>{width, plan.send_token.data(), x.data(), send.data()});
    gather_rows(plan, x, wire_rows(send_host, width));
    CHECK(send == send_host);
    for (std::int64_t r = 0; r < rows; ++r) {
      const std::int64_t t = plan.send_token[size(r)];
      for (std::int64_t c = 0; c < width; ++c) CHECK(send[size(r * width + c)] == wire_value<Wire>(x[size(t * width + c)]));
    }

    // Combine, and the float64 sum it computes.
    std::vector<float> y(size(tokens * width)), y_host(y.size());
    device::launch_host(tokens * width, device::CombineRowsOp<Wire>{width, k, plan.send_row.data(),
                                                                    weight.data(), back.data(), y.data()});
    combine_rows(plan, weight, wire_rows(back, width), y_host);
    CHECK(y == y_host);
    std::vector<double> y_ref(y.size(), 0.0), dx_ref(y.size(), 0.0), dw_ref(size(tokens * k), 0.0);
    for (std::int64_t a = 0; a < tokens * k; ++a) {
      const std::int64_t row = plan.send_row[size(a)], t = a / k;
      if (row < 0) continue;
      for (std::int64_t c = 0; c < width; ++c) {
        const double b = device::from_wire(back[size(row * width + c)]);
        y_ref[size(t * width + c)] += double{weight[size(a)]} * b;
        dx_ref[size(t * width + c)] += b;
        dw_ref[size(a)] += double{dy[size(t * width + c)]} * b;
      }
    }
    CHECK(relative_error(y, y_ref) <= 1e-6);

    // Combine backward: to the rows and to the weights.
    std::vector<Wire> d_out(back.size(), wire_value<Wire>(0.0f)), d_out_host = d_out;
    std::vector<float> d_weight(size(tokens * k)), d_weight_host(d_weight.size());
    device::launch_host(tokens * k * width, device::CombineRowsBackwardOp<Wire>{
        width, k, plan.send_row.data(), weight.data(), dy.data(), d_out.data()});
    device::launch_host(tokens * k, device::CombineWeightGradOp<Wire>{width, k, plan.send_row.data(),
                                                                      dy.data(), back.data(), d_weight.data()});
    combine_rows_backward(plan, weight, wire_rows(back, width), dy, wire_rows(d_out_host, width),
                          d_weight_host);
    CHECK(d_out == d_out_host);
    CHECK(d_weight == d_weight_host);
    CHECK(relative_error(d_weight, dw_ref) <= 1e-6);
    for (std::int64_t a = 0; a < tokens * k; ++a) {
      const std::int64_t row = plan.send_row[size(a)];
      if (row < 0) continue;
      CHECK(d_out[size(row * width)] == wire_value<Wire>(weight[size(a)] * dy[size((a / k) * width)]));
    }

    // Gather backward (back stands for d_send).
    std::vector<float> dx(size(tokens * width)), dx_host(dx.size());
    device::launch_host(tokens * width, device::GatherRowsBackwardOp<Wire>{width, k, plan.send_row.data(),
                                                                           back.data(), dx.data()});
    gather_rows_backward(plan, wire_rows(back, width), dx_host);
    CHECK(dx == dx_host);
    CHECK(relative_error(dx, dx_ref) <= 1e-6);
  }
}

TEMPLATE_TEST_CASE("the padded exchange's padding rows are zeroed as the host does it", "[device-host][permute]",
                   float, device::WireBf16) {
  using Wire = TestType;
  PlannedCase p = planned_case("tight_capacity");
  DispatchPlan& plan = p.plan;
  // Padded to more slots than any expert keeps, so every list has padding rows.
  const std::int64_t slots = *std::max_element(plan.kept.begin(), plan.kept.end()) + 2;
  build_plan(p.config, 2, 0, p.routing.expert, p.tokens, 1, slots, {}, plan);
  const std::int64_t width = p.config.d_model, rows = plan.num_send_rows();
  REQUIRE(std::count(plan.send_token.begin(), plan.send_token.end(), -1) >= 2 * p.config.num_experts);
  std::vector<Wire> send = to_wire_rows<Wire>(random_values(static_cast<std::size_t>(rows * width), 4));
  std::vector<Wire> send_host = send;
  const std::vector<Wire> before = send;
  device::launch_host(rows * width, device::ZeroPaddingRowsOp<Wire>{width, plan.send_token.data(), send.data()});
  zero_padding_rows(plan, wire_rows(send_host, width));
  CHECK(send == send_host);
  for (std::int64_t r = 0; r < rows; ++r) {
    const auto first = static_cast<std::size_t>(r * width);
    const bool padding = plan.send_token[static_cast<std::size_t>(r)] < 0;
    for (std::int64_t c = 0; c < width; ++c) {
      CHECK(send[first + static_cast<std::size_t>(c)] ==
            (padding ? wire_value<Wire>(0.0f) : before[first + static_cast<std::size_t>(c)]));
    }
  }
}

TEST_CASE("the check_finite op finds each row's first non-finite value, as first_non_finite reads it",
          "[device-host][permute]") {
  const std::int64_t rows = 5, width = 7;
  std::vector<float> x = random_values(static_cast<std::size_t>(rows * width), 5);
  std::vector<std::int64_t> column(static_cast<std::size_t>(rows), 99);
  const auto scan = [&] { device::launch_host(rows, device::FirstNonFiniteOp{width, x.data(), column.data()}); };
  scan();
  CHECK(column == std::vector<std::int64_t>(static_cast<std::size_t>(rows), -1));
  CHECK(first_non_finite("input", x, width).empty());
  // Row 3 has an infinity after a NaN, row 1 an infinity in its last column.
  x[static_cast<std::size_t>(3 * width + 2)] = std::nanf("");
  x[static_cast<std::size_t>(3 * width + 5)] = std::numeric_limits<float>::infinity();
  x[static_cast<std::size_t>(1 * width + 6)] = -std::numeric_limits<float>::infinity();
  scan();
  CHECK(column == std::vector<std::int64_t>{-1, 6, -1, 2, -1});
  CHECK(first_non_finite("input", x, width) == non_finite_message("input", 1, 6, x[static_cast<std::size_t>(width + 6)]));
  CHECK(non_finite_message("input", 3, 2, std::nanf("")) == "input row 3 column 2 is NaN (check_finite is on)");
}

namespace {

using experts::Activation;

double normal_cdf(double x) { return 0.5 * std::erfc(-x / std::sqrt(2.0)); }
double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

// The activations of SPEC.md section 5 and their derivatives, in double.
double activation_ref(Activation a, double x) {
  constexpr double kPi = 3.14159265358979323846;
  const double c = std::sqrt(2.0 / kPi);
  switch (a) {
    case Activation::gelu: return x * normal_cdf(x);
    case Activation::gelu_tanh: return 0.5 * x * (1.0 + std::tanh(c * (x + 0.044715 * x * x * x)));
    case Activation::relu: return x > 0 ? x : 0.0;
    case Activation::silu:
    case Activation::swiglu: return x * sigmoid(x);
  }
  return 0;
}

double activation_grad_ref(Activation a, double x) {
  constexpr double kPi = 3.14159265358979323846;
  const double c = std::sqrt(2.0 / kPi);
  switch (a) {
    case Activation::gelu: return normal_cdf(x) + x * std::exp(-0.5 * x * x) / std::sqrt(2.0 * kPi);
    case Activation::gelu_tanh: {
      const double u = c * (x + 0.044715 * x * x * x), th = std::tanh(u);
      return 0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * c * (1.0 + 3.0 * 0.044715 * x * x);
    }
    case Activation::relu: return x > 0 ? 1.0 : 0.0;
    case Activation::silu:
    case Activation::swiglu: return sigmoid(x) * (1.0 + x * (1.0 - sigmoid(x)));
  }
  return 0;
}

}  // namespace

TEST_CASE("activation ops match the float64 activations and the host kernels",
          "[device-host][activation]") {
  const std::int64_t rows = 9, cols = 37, n = rows * cols;
  const auto size = static_cast<std::size_t>(n);
  const std::vector<float> pre0 = random_values(size, 11, 6.0f);
  const std::vector<float> bias = random_values(static_cast<std::size_t>(cols), 12);
  const std::vector<float> upstream = random_values(size, 13);
  for (Activation a : {Activation::gelu, Activation::gelu_tanh, Activation::relu, Activation::silu}) {
    INFO("activation " << experts::to_string(a));
    std::vector<float> pre = pre0, act(size), pre_host = pre0, act_host(size);
    device::launch_host(n, device::BiasActivationForwardOp{a, cols, bias.data(), pre.data(), act.data()});
    experts::bias_activation_forward(a, rows, cols, bias, pre_host, act_host);
    CHECK(pre == pre_host);
    CHECK(close_to_host(act, act_host));

    std::vector<float> grad = upstream, grad_host = upstream;
    std::vector<float> bias_grad(static_cast<std::size_t>(cols), 0.0f), bias_grad_host = bias_grad;
    device::launch_host(n, device::ActivationBackwardOp{a, pre.data(), grad.data()});
    device::launch_host(cols, device::ColumnSumOp{rows, cols, grad.data(), bias_grad.data()});
    experts::activation_backward(a, rows, cols, pre_host, grad_host, bias_grad_host);
    CHECK(close_to_host(grad, grad_host));
    CHECK(close_to_host(bias_grad, bias_grad_host));

    std::vector<double> act_ref(size), grad_ref(size), bias_grad_ref(static_cast<std::size_t>(cols), 0.0);
    for (std::size_t i = 0; i < size; ++i) {
      act_ref[i] = activation_ref(a, pre[i]);
      grad_ref[i] = double{upstream[i]} * activation_grad_ref(a, pre[i]);
      bias_grad_ref[i % static_cast<std::size_t>(cols)] += grad_ref[i];
    }
    CHECK(relative_error(act, act_ref) <= 1e-5);
    CHECK(relative_error(grad, grad_ref) <= 1e-5);
    CHECK(relative_error(bias_grad, bias_grad_ref) <= 1e-5);
  }
}

TEST_CASE("swiglu ops match float64 and the host kernels", "[device-host][activation]") {
  const std::int64_t n = 301;
  const auto size = static_cast<std::size_t>(n);
  const std::vector<float> pre = random_values(size, 21, 6.0f), gate = random_values(size, 22, 2.0f);
  const std::vector<float> upstream = random_values(size, 23);
  std::vector<float> act(size), act_host(size);
  device::launch_host(n, device::SwigluForwardOp{pre.data(), gate.data(), act.data()});
  experts::swiglu_forward(pre, gate, act_host);
  CHECK(close_to_host(act, act_host));

  std::vector<float> grad = upstream, grad_gate(size), grad_host = upstream, grad_gate_host(size);
  device::launch_host(n, device::SwigluBackwardOp{pre.data(), gate.data(), grad.data(), grad_gate.data()});
  experts::swiglu_backward(pre, gate, grad_host, grad_gate_host);
  CHECK(close_to_host(grad, grad_host));
  CHECK(close_to_host(grad_gate, grad_gate_host));

  std::vector<double> act_ref(size), grad_ref(size), grad_gate_ref(size);
  for (std::size_t i = 0; i < size; ++i) {
    const double silu = pre[i] * sigmoid(pre[i]);
    act_ref[i] = silu * gate[i];
    grad_gate_ref[i] = double{upstream[i]} * silu;
    grad_ref[i] = double{upstream[i]} * gate[i] * activation_grad_ref(Activation::silu, pre[i]);
  }
  CHECK(relative_error(act, act_ref) <= 1e-5);
  CHECK(relative_error(grad, grad_ref) <= 1e-5);
  CHECK(relative_error(grad_gate, grad_gate_ref) <= 1e-5);
}

TEST_CASE("a chunk's exchange byte counts tile the chunk's rows in peer order", "[device-host][permute]") {
  PlannedCase p = planned_case("default");
  DispatchPlan& plan = p.plan;
  build_plan(p.config, 2, 0, p.routing.expert, p.tokens, 3, -1, {}, plan);
  std::vector<std::int64_t> recv_counts(static_cast<std::size_t>(2 * plan.local_experts));
  for (std::size_t i = 0; i < recv_counts.size(); ++i) recv_counts[i] = static_cast<std::int64_t>(3 * i + 1);
  set_receive_counts(plan, recv_counts);
  const std::size_t row_bytes = 4 * static_cast<std::size_t>(p.config.d_model);
  std::vector<std::size_t> to_peer(2), from_peer(2), sent_to(2, 0), received_from(2, 0);
  std::size_t sent = 0, received = 0;
  for (int c = 0; c < plan.num_chunks; ++c) {
    device::chunk_exchange_bytes(plan, c, row_bytes, to_peer, from_peer);
    CHECK(to_peer[0] + to_peer[1] == static_cast<std::size_t>(plan.chunk_send_rows(c)) * row_bytes);
    CHECK(from_peer[0] + from_peer[1] == static_cast<std::size_t>(plan.chunk_recv_rows(c)) * row_bytes);
    CHECK(sent == static_cast<std::size_t>(plan.chunk_send_begin(c)) * row_bytes);
    CHECK(received == static_cast<std::size_t>(plan.chunk_recv_begin(c)) * row_bytes);
    for (std::size_t q = 0; q < 2; ++q) {
      sent += to_peer[q];
      received += from_peer[q];
      sent_to[q] += to_peer[q];
      received_from[q] += from_peer[q];
    }
  }
  std::int64_t expected_received = 0;
  for (auto n : recv_counts) expected_received += n;
  CHECK(received == static_cast<std::size_t>(expected_received) * row_bytes);
  for (int q = 0; q < 2; ++q) {
    CHECK(sent_to[static_cast<std::size_t>(q)] == static_cast<std::size_t>(plan.send_rows_to(q)) * row_bytes);
    CHECK(received_from[static_cast<std::size_t>(q)] == static_cast<std::size_t>(plan.recv_rows_from(q)) * row_bytes);
  }
}

TEMPLATE_TEST_CASE("expert-order ops match the host's to/from_expert_order on every chunk", "[device-host][permute]",
                   float, device::WireBf16) {
  using Wire = TestType;
  PlannedCase p = planned_case("default");
  DispatchPlan& plan = p.plan;
  build_plan(p.config, 2, 0, p.routing.expert, p.tokens, 5, -1, {}, plan);
  std::vector<std::int64_t> recv_counts(static_cast<std::size_t>(2 * plan.local_experts));
  for (std::size_t i = 0; i < recv_counts.size(); ++i) recv_counts[i] = static_cast<std::int64_t>((5 * i + 2) % 9);
  set_receive_counts(plan, recv_counts);
  const std::int64_t width = p.config.d_model, rows = plan.num_recv_rows();
  REQUIRE(rows > 0);
  std::vector<Wire> received = to_wire_rows<Wire>(random_values(static_cast<std::size_t>(rows * width), 31));
  std::vector<float> expert(received.size(), -1.0f), expert_host(received.size(), -1.0f);
  std::vector<std::int64_t> map(static_cast<std::size_t>(rows));
  for (int c = 0; c < plan.num_chunks; ++c) {
    const std::int64_t first = plan.chunk_recv_begin(c), count = plan.chunk_recv_rows(c);
    device::expert_row_map(plan, c, map);
    device::launch_host(count * width, device::ToExpertOrderOp<Wire>{width, map.data(),
                                                                    received.data() + first * width, expert.data()});
    to_expert_order(plan, c, wire_rows(received, width), expert_host);
  }
  CHECK(expert == expert_host);  // every row written once: no -1 left where the host wrote
  std::vector<Wire> back(received.size(), wire_value<Wire>(0.0f)), back_host = back;
  for (int c = 0; c < plan.num_chunks; ++c) {
    const std::int64_t first = plan.chunk_recv_begin(c), count = plan.chunk_recv_rows(c);
    device::expert_row_map(plan, c, map);
    device::launch_host(count * width, device::FromExpertOrderOp<Wire>{width, map.data(), expert.data(),
                                                                      back.data() + first * width});
    from_expert_order(plan, c, expert, wire_rows(back_host, width));
  }
  CHECK(back == back_host);
  CHECK(back == received);  // there and back is the identity (a bf16 value widens and rounds back exactly)
}

namespace {

// BLAS's column-major GEMM written out (what cuBLAS computes), in double:
// C(i, j) = alpha Σ_l op(A)(i, l) op(B)(l, j) + beta C(i, j), element (r, c) of X at x[r + c·ldx].
void column_major_gemm(const experts::ColumnMajorGemm& g, float alpha, float beta) {
  for (std::int64_t i = 0; i < g.m; ++i) {
    for (std::int64_t j = 0; j < g.n; ++j) {
      double sum = 0;
      for (std::int64_t l = 0; l < g.k; ++l) {
        const double a = g.transpose_a ? g.a[l + i * g.lda] : g.a[i + l * g.lda];
        const double b = g.transpose_b ? g.b[j + l * g.ldb] : g.b[l + j * g.ldb];
        sum += a * b;
      }
      float& c = g.c[i + j * g.ldc];
      c = static_cast<float>(alpha * sum + beta * double{c});
    }
  }
}

}  // namespace

TEST_CASE("the cuBLAS view of a row-major product computes the same product", "[device-host][gemm]") {
  using experts::Op;
  const std::int64_t m = 5, n = 7, k = 3, pad = 2;
  for (Op op_a : {Op::none, Op::transpose}) {
    for (Op op_b : {Op::none, Op::transpose}) {
      INFO("op_a " << (op_a == Op::none ? "N" : "T") << " op_b " << (op_b == Op::none ? "N" : "T"));
      // Stored row-major with padded rows: A is [m, k] or, transposed, [k, m]; B likewise.
      const std::int64_t a_rows = op_a == Op::none ? m : k, a_cols = op_a == Op::none ? k : m;
      const std::int64_t b_rows = op_b == Op::none ? k : n, b_cols = op_b == Op::none ? n : k;
      const std::int64_t lda = a_cols + pad, ldb = b_cols + pad, ldc = n + pad;
      const std::vector<float> a = random_values(static_cast<std::size_t>(a_rows * lda), 41);
      const std::vector<float> b = random_values(static_cast<std::size_t>(b_rows * ldb), 42);
      std::vector<float> c_row_major = random_values(static_cast<std::size_t>(m * ldc), 43);
      std::vector<float> c_view = c_row_major;
      experts::gemm(op_a, op_b, m, n, k, 1.5f, a, lda, b, ldb, 0.5f, c_row_major, ldc);
      const experts::GemmGroup group{a.data(), lda, b.data(), ldb, c_view.data(), ldc, m, n, k};
      column_major_gemm(experts::column_major_view(op_a, op_b, group), 1.5f, 0.5f);
      CHECK(relative_error(c_view, std::vector<double>(c_row_major.begin(), c_row_major.end())) <= 1e-6);
    }
  }
}
