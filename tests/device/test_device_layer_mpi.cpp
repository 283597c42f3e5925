// The device layer's composition (runtime/device/device_layer.hpp) on the host backend: the same
// control logic, ops and chunked exchanges a GPU runs, here with the host launcher, oneDNN and MPI.
// Forward, backward and the selection-bias update against the float64 reference on every
// standard case, with one chunk and with three, over the variable and the padded exchange (the
// latter with check_finite on), and so with the bf16 wire on the bf16 cases; against MoeLayer on
// a few, with either wire; bitwise reproducible; a reused layer equals a fresh one;
// overlap_chunks = auto (the count chosen, the same on every rank, and the results of a fixed
// count equal to it; the host backend's timing marks); refused options; check_finite's and a
// configuration mismatch's errors, the
// same on every rank as MoeLayer's; bit for bit the same with the control traffic staged as the
// CUDA session stages it. Only CHECK after the first collective.
#include <catch2/catch.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <memory>
#include <set>
#include <string>
#include <thread>

#include "comm/mpi_communicator.hpp"
#include "runtime/device/device_layer.hpp"
#include "runtime/device/device_layer_impl.hpp"
#include "runtime/device/host_backend.hpp"
#include "runtime/error.hpp"
#include "runtime/initialization.hpp"
#include "runtime/layer_case.hpp"
#include "tests/comm/staged_world.hpp"
#include "tests/support/case_bridge.hpp"
#include "tests/support/layer_run.hpp"

namespace {

using namespace moe;
using HostLayer = device::DeviceLayer<device::HostBackend>;

std::span<const float> rank_rows(const LayerCase& lc, const char* tensor, int rank) {
  const std::int64_t d = lc.config.d_model;
  return lc.file.tensors.at(tensor).f32().subspan(
      static_cast<std::size_t>(lc.first_row(rank) * d),
      static_cast<std::size_t>(lc.tokens_per_rank[static_cast<std::size_t>(rank)] * d));
}

struct DeviceRun {
  std::vector<float> y, dx;
  ForwardResult result;
  device::LayerParameters grads;  // gate_weight and shared_expert summed over the ranks
  std::vector<float> bias;        // after one update
};

// Forward, backward and the bias update of `lc` through `layer` (parameters loaded here).
DeviceRun run_on(HostLayer& layer, comm::Communicator& comm, const LayerCase& lc) {
  const int r = comm.rank();
  layer.load(device::case_parameters(lc, r, comm.size()));
  layer.zero_grad();
  const auto x = rank_rows(lc, "input", r);
  const std::int64_t tokens = lc.tokens_per_rank[static_cast<std::size_t>(r)];
  DeviceRun run;
  run.y.assign(x.size(), std::nanf(""));
  run.dx.assign(x.size(), std::nanf(""));
  run.result = layer.forward(x.data(), tokens, run.y.data());
  layer.backward(x.data(), rank_rows(lc, "grad_output", r).data(), run.dx.data());
  layer.update_selection_bias();
  run.grads = layer.gradients();
  run.bias = layer.selection_bias();
  comm.allreduce(std::span<float>(run.grads.gate_weight), comm::ReduceOp::sum);
  for (auto name : experts::expert_param_names(lc.config.activation)) {
    if (run.grads.shared_expert.num_experts() == 1) {
      comm.allreduce(run.grads.shared_expert.param(0, name), comm::ReduceOp::sum);
    }
  }
  return run;
}

// The rows over `comm`, the counts and the layer's other control traffic over `control`.
DeviceRun run_device(comm::Communicator& comm, comm::Communicator& control, const LayerCase& lc,
                     const MoeConfig& config) {
  device::HostBackend backend(comm);
  HostLayer layer(config, control, backend);
  return run_on(layer, comm, lc);
}

DeviceRun run_device(comm::Communicator& comm, const LayerCase& lc, const MoeConfig& config) {
  return run_device(comm, comm, lc, config);
}

double group_error(comm::Communicator& comm, std::span<const float> actual, std::span<const double> expected) {
  test::ErrorSums local;
  local.add(actual, expected);
  double sums[2] = {local.diff_sq, local.ref_sq};
  comm.allreduce(std::span<double>(sums, 2), comm::ReduceOp::sum);
  return test::ErrorSums{sums[0], sums[1]}.relative();
}

std::vector<double> rows_of(const std::vector<double>& all, const LayerCase& lc, int rank) {
  const auto first = all.begin() + lc.first_row(rank) * lc.config.d_model;
  return {first, first + lc.tokens_per_rank[static_cast<std::size_t>(rank)] * lc.config.d_model};
}

double relative(std::span<const float> actual, std::span<const double> expected) {
  test::ErrorSums e;
  e.add(actual, expected);
  return e.relative();
}

// `bound` for the outputs, `grad_bound` for the gradients that pass through the experts (SPEC.md
// section 9: 1e-5 in fp32, 1e-2 with the bf16 wire; relu's gradients in bf16 see
// test::kReluBf16GradientBound). The router runs in fp32 either way, so the losses and the
// counts keep fp32's bounds.
void check_against_reference(comm::Communicator& comm, const LayerCase& lc, const DeviceRun& run,
                             const ref::LayerResult& expected, double bound, double grad_bound) {
  const int r = comm.rank();
  CHECK(group_error(comm, run.y, rows_of(expected.output, lc, r)) <= bound);
  CHECK(group_error(comm, run.dx, rows_of(expected.grads->input, lc, r)) <= grad_bound);
  test::ErrorSums aux, z;
  aux.add(run.result.aux_loss, expected.aux_loss);
  z.add(run.result.z_loss, expected.z_loss);
  CHECK(aux.relative() <= 1e-5);
  CHECK(z.relative() <= 1e-5);
  const ForwardStats& stats = run.result.stats;
  CHECK(stats.expert_counts == expected.expert_counts);
  CHECK(stats.expert_kept == expected.expert_kept);
  CHECK(stats.dropped_assignments == expected.dropped_assignments);
  CHECK(stats.dropped_tokens == expected.dropped_tokens);
  CHECK(relative(run.grads.gate_weight, expected.grads->params.gate) <= grad_bound);
  const std::int64_t first = first_expert_of(r, lc.config.num_experts, comm.size());
  for (std::int64_t e = 0; e < run.grads.experts.num_experts(); ++e) {
    for (auto name : experts::expert_param_names(lc.config.activation)) {
      INFO("expert " << first + e << " " << name);
      CHECK(relative(run.grads.experts.param(e, name),
                     test::expert_param(expected.grads->params.experts[static_cast<std::size_t>(first + e)], name)) <= grad_bound);
    }
  }
  if (expected.grads->params.shared_expert) {
    for (auto name : experts::expert_param_names(lc.config.activation)) {
      INFO("shared expert " << name);
      CHECK(relative(run.grads.shared_expert.param(0, name),
                     test::expert_param(*expected.grads->params.shared_expert, name)) <= grad_bound);
    }
  }
  if (!expected.score_bias_updated.empty()) CHECK(relative(run.bias, expected.score_bias_updated) <= 1e-6);
}

// overlap_chunks = auto's tests: the host backend with scripted times, so that the choice is
// known. A unit u = 1 ms·(1 + rank) for each exchange and the experts (marks one u apart; an
// exchange's later start mark is one u before its end), λ = 10 µs·(1 + rank). Gathered over 2
// ranks: λ 20 µs, X = 2 ms from rank 0, K = 2 ms from rank 1, so sqrt(2 ms / 40 µs) = 7.07 -> 7;
// rank 0 deciding alone would take K = 1 ms and choose 5. On 1 rank: sqrt(1 ms / 20 µs) -> 7.
class ScriptedTimes : public device::HostBackend {
 public:
  explicit ScriptedTimes(comm::Communicator& comm) : HostBackend(comm), scale_(1.0 + comm.rank()) {}
  double seconds(int from, int to) const {
    using device::layer_detail::Mark;
    if (from == Mark::packed_mark && to == Mark::dispatch_start) return 1e-5 * scale_;  // the empty exchange
    return 1e-3 * scale_ * (to - from);
  }

 private:
  double scale_;
};

static_assert(device::LayerBackend<ScriptedTimes>);

// 2 experts a rank, 2048 tokens a rank, top-1, dropless: 1024 rows per expert, so the row clamp
// allows up to 8 chunks.
MoeConfig auto_config(int ranks) {
  MoeConfig c;
  c.num_experts = 2 * ranks;
  c.d_model = 8;
  c.d_hidden = 8;
  c.top_k = 1;
  c.capacity_factor = 0;
  return c;
}

struct AutoPass {
  std::vector<float> y, dx, gate_grad, w1_grad;
};

// Forward and backward of seeded rows and parameters through `layer` (gradients from zero).
template <class Backend>
AutoPass run_auto_pass(device::DeviceLayer<Backend>& layer, comm::Communicator& comm, std::int64_t tokens) {
  const MoeConfig& config = layer.config();
  const std::string rank = ".rank" + std::to_string(comm.rank());
  device::LayerParameters params = device::zero_parameters(config, comm.rank(), comm.size());
  fill_normal(params.gate_weight, 7, "gate");
  for (std::int64_t e = 0; e < params.experts.num_experts(); ++e) {
    for (auto name : experts::expert_param_names(config.activation)) {
      fill_normal(params.experts.param(e, name), 7, std::string(name) + rank + ".e" + std::to_string(e));
    }
  }
  layer.load(params);
  layer.zero_grad();
  AutoPass pass;
  std::vector<float> x(static_cast<std::size_t>(tokens * config.d_model)), dy(x.size());
  fill_normal(x, 7, "x" + rank);
  fill_normal(dy, 7, "dy" + rank);
  pass.y.resize(x.size());
  pass.dx.resize(x.size());
  layer.forward(x.data(), tokens, pass.y.data());
  layer.backward(x.data(), dy.data(), pass.dx.data());
  const device::LayerParameters grads = layer.gradients();
  pass.gate_grad = grads.gate_weight;
  for (std::int64_t e = 0; e < grads.experts.num_experts(); ++e) {
    const auto w1 = grads.experts.w1(e);
    pass.w1_grad.insert(pass.w1_grad.end(), w1.begin(), w1.end());
  }
  return pass;
}

// Bitwise: no NaN can appear here, so == is bit equality.
void check_same(const AutoPass& a, const AutoPass& b) {
  CHECK(a.y == b.y);
  CHECK(a.dx == b.dx);
  CHECK(a.gate_grad == b.gate_grad);
  CHECK(a.w1_grad == b.w1_grad);
}

// An auto layer's first pass (one chunk) and second (the chosen count) against layers with those
// counts fixed; returns the count chosen, checked to be every rank's.
template <class Backend>
int check_auto(comm::Communicator& comm) {
  const MoeConfig fixed = auto_config(comm.size());
  const std::int64_t tokens = 2048;
  MoeConfig automatic = fixed;
  automatic.overlap_chunks = 0;
  Backend backend(comm);
  device::DeviceLayer<Backend> layer(automatic, comm, backend);
  CHECK(layer.chunks() == 1);
  const AutoPass first = run_auto_pass(layer, comm, tokens);
  const int chosen = layer.chunks();
  const AutoPass second = run_auto_pass(layer, comm, tokens);
  CHECK(layer.chunks() == chosen);  // chosen once
  std::vector<double> counts(static_cast<std::size_t>(comm.size()));
  const double mine = chosen;
  comm.allgather(reinterpret_cast<const std::byte*>(&mine), reinterpret_cast<std::byte*>(counts.data()), sizeof(double));
  CHECK(std::ranges::all_of(counts, [&](double c) { return c == mine; }));
  CHECK(chosen >= 1);
  CHECK(chosen <= 8);
  for (const auto& [chunks, pass] : {std::pair{1, &first}, std::pair{chosen, &second}}) {
    INFO(chunks << " chunks fixed");
    MoeConfig config = fixed;
    config.overlap_chunks = chunks;
    device::HostBackend host(comm);
    device::DeviceLayer<device::HostBackend> reference(config, comm, host);
    check_same(*pass, run_auto_pass(reference, comm, tokens));
  }
  return chosen;
}

// Every case of `cases` with rows on the `wire`, over both exchanges with one chunk and with
// three, against the float64 reference.
void check_cases_against_reference(comm::Communicator& world, const std::vector<test::NamedCase>& cases,
                                   WireFormat wire) {
  for (const auto& named : cases) {
    // One section per case, its variants inside: Catch2 reruns the loop, references included, per
    // section.
    DYNAMIC_SECTION(named.name) {
      const ref::LayerCase c = ref::make_case(named.spec);
      const ref::LayerResult expected = ref::run_reference(c);
      const LayerCase lc = layer_case_from_file(test::to_case_file(c), named.name);
      const double bound = wire == WireFormat::fp32 ? 1e-5 : 1e-2;
      const bool relu_bf16 = wire == WireFormat::bf16 && lc.config.activation == experts::Activation::relu;
      const double grad_bound = relu_bf16 ? test::kReluBf16GradientBound : bound;
      for (const ExchangeKind exchange : {ExchangeKind::variable, ExchangeKind::padded}) {
        // The padded exchange needs a capacity to size its slots.
        if (exchange == ExchangeKind::padded && lc.config.dropless()) continue;
        for (std::int64_t chunks : {1, 3}) {
          INFO(to_string(exchange) << ", " << chunks << " chunks, wire " << to_string(wire));
          MoeConfig config = lc.config;
          config.exchange = exchange;
          config.overlap_chunks = chunks;
          config.wire = wire;
          // Checking for NaN/Inf changes no result.
          config.check_finite = exchange == ExchangeKind::padded;
          check_against_reference(world, lc, run_device(world, lc, config), expected, bound, grad_bound);
        }
      }
    }
  }
}

}  // namespace

TEST_CASE("the device layer on the host backend matches the float64 reference", "[device][layer]") {
  auto world = comm::MpiCommunicator::world();
  check_cases_against_reference(*world, test::standard_cases(world->size()), WireFormat::fp32);
}

TEST_CASE("the device layer with the bf16 wire stays within 1e-2 of the float64 reference",
          "[device][layer][bf16]") {
  // SPEC.md section 9's bound is about layers of realistic width: the bf16 cases, not the standard
  // ones' toy widths (tests/support/case_bridge.hpp).
  auto world = comm::MpiCommunicator::world();
  check_cases_against_reference(*world, test::bf16_cases(world->size()), WireFormat::bf16);
}

TEST_CASE("the device layer agrees with MoeLayer", "[device][layer]") {
  // A few cases that differ in every part of the layer (the reference test above runs them all),
  // with each exchange the device layer runs, the padded one also with check_finite; each with
  // either wire format, the same on both paths.
  const std::set<std::string> chosen = {"empty_rank", "score_policy", "sigmoid_bias", "shared_swiglu_dropping",
                                        "global_score", "deepseek_v3"};
  auto world = comm::MpiCommunicator::world();
  for (const auto& named : test::standard_cases(world->size())) {
    if (chosen.count(named.name) == 0) continue;
    const LayerCase lc = layer_case_from_file(test::to_case_file(ref::make_case(named.spec)), named.name);
    for (const ExchangeKind exchange : {ExchangeKind::variable, ExchangeKind::padded}) {
      if (exchange == ExchangeKind::padded && lc.config.dropless()) continue;
      DYNAMIC_SECTION(named.name << ", " << to_string(exchange)) {
        for (const WireFormat wire : {WireFormat::fp32, WireFormat::bf16}) {
          INFO("wire " << to_string(wire));
          MoeConfig config = lc.config;
          config.exchange = exchange;
          config.check_finite = exchange == ExchangeKind::padded;
          config.wire = wire;
          const DeviceRun run = run_device(*world, lc, config);
          const test::LayerRun host = test::run_layer_case(*world, lc, config);
          const auto as_double = [](const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); };
          // Both paths round the same values at the same points, so the bf16 wire is as close as
          // fp32 (GEMM blocking only; measured: at most 5e-8 either way, and bit for bit the same
          // with the bf16 wire unless a shared expert runs).
          CHECK(group_error(*world, run.y, as_double(host.y)) <= 1e-6);
          CHECK(group_error(*world, run.dx, as_double(host.dx)) <= 1e-6);
          CHECK(relative(run.grads.gate_weight, as_double(host.gate_grad)) <= 1e-6);
          CHECK(run.result.stats.expert_kept == host.result.stats.expert_kept);
          // With the padded exchange these count the padding rows too, on both paths.
          CHECK(run.result.stats.bytes_sent == host.result.stats.bytes_sent);
          CHECK(run.result.stats.bytes_received == host.result.stats.bytes_received);
          CHECK(run.result.stats.rows_to_peer == host.result.stats.rows_to_peer);
          CHECK(run.result.aux_loss == host.result.aux_loss);
          CHECK(run.result.z_loss == host.result.z_loss);
        }
      }
    }
  }
}

TEST_CASE("the device layer is bitwise reproducible, and a reused layer equals a fresh one", "[device][layer]") {
  auto world = comm::MpiCommunicator::world();
  const auto cases = test::standard_cases(world->size());
  const LayerCase small = layer_case_from_file(test::to_case_file(ref::make_case(cases[0].spec)), "small");
  ref::CaseSpec bigger = cases[0].spec;
  for (auto& t : bigger.tokens_per_rank) t = t * 3 + 5;
  const LayerCase big = layer_case_from_file(test::to_case_file(ref::make_case(bigger)), "big");

  device::HostBackend backend(*world);
  HostLayer layer(small.config, *world, backend);
  for (const LayerCase* lc : {&big, &small, &big}) {
    const DeviceRun reused = run_on(layer, *world, *lc);
    const DeviceRun fresh = run_device(*world, *lc, small.config);
    // Bitwise: no NaN can appear here, so == is bit equality.
    CHECK(reused.y == fresh.y);
    CHECK(reused.dx == fresh.dx);
    CHECK(reused.grads.gate_weight == fresh.grads.gate_weight);
    CHECK(reused.result.aux_loss == fresh.result.aux_loss);
  }
}

TEST_CASE("the device layer's results are bit for bit the same with its control traffic staged", "[device][layer][staged]") {
  // The CUDA session's arrangement (runtime/device/device_session.hpp), here with host memory as
  // the device's: the layer's control communicator is a StagedCommunicator over the device
  // communicator the rows could use, so counts, error agreement and statistics go through staging.
  auto world = comm::MpiCommunicator::world();
  comm::test::StagedWorld staged;
  const auto same = [](std::span<const float> a, std::span<const float> b) { return std::ranges::equal(a, b); };
  for (const auto& named : test::standard_cases(world->size())) {
    // One section per case, the chunk counts inside it: Catch2 reruns the loop per section.
    DYNAMIC_SECTION(named.name) {
      const LayerCase lc = layer_case_from_file(test::to_case_file(ref::make_case(named.spec)), named.name);
      for (std::int64_t chunks : {1, 3}) {
        INFO(chunks << " chunks");
        MoeConfig config = lc.config;
        config.overlap_chunks = chunks;
        const DeviceRun direct = run_device(*world, lc, config);
        const DeviceRun via = run_device(*world, *staged.comm, lc, config);
        // Bitwise: no NaN can appear here, so == is bit equality.
        CHECK(via.y == direct.y);
        CHECK(via.dx == direct.dx);
        CHECK(via.bias == direct.bias);
        CHECK(via.result.aux_loss == direct.result.aux_loss);
        CHECK(via.result.z_loss == direct.result.z_loss);
        const ForwardStats& a = via.result.stats;
        const ForwardStats& b = direct.result.stats;
        CHECK(a.total_tokens == b.total_tokens);
        CHECK(a.expert_counts == b.expert_counts);
        CHECK(a.expert_kept == b.expert_kept);
        CHECK(a.dropped_assignments == b.dropped_assignments);
        CHECK(a.dropped_tokens == b.dropped_tokens);
        CHECK(a.bytes_sent == b.bytes_sent);
        CHECK(a.bytes_received == b.bytes_received);
        CHECK(a.rows_to_peer == b.rows_to_peer);
        CHECK(a.rows_from_peer == b.rows_from_peer);
        CHECK(a.load_max_over_mean == b.load_max_over_mean);
        CHECK(a.load_min == b.load_min);
        CHECK(a.load_std == b.load_std);
        CHECK(via.grads.gate_weight == direct.grads.gate_weight);
        for (auto name : experts::expert_param_names(lc.config.activation)) {
          for (std::int64_t e = 0; e < direct.grads.experts.num_experts(); ++e) {
            INFO("expert " << e << " " << name);
            CHECK(same(via.grads.experts.param(e, name), direct.grads.experts.param(e, name)));
          }
          if (direct.grads.shared_expert.num_experts() == 1) {
            INFO("shared expert " << name);
            CHECK(same(via.grads.shared_expert.param(0, name), direct.grads.shared_expert.param(0, name)));
          }
        }
      }
    }
  }
  // The staged run did use its staging memory (a layer that bypassed `control` would not).
  CHECK(staged.staging->allocations() > 0);
}

TEST_CASE("the device layer refuses what it does not run, on every rank alike", "[device][layer][errors]") {
  auto world = comm::MpiCommunicator::world();
  MoeConfig config;
  config.num_experts = 8;
  config.d_model = 8;
  config.d_hidden = 8;
  const auto message_of = [&](MoeConfig c) -> std::string {
    device::HostBackend backend(*world);
    try {
      HostLayer layer(c, *world, backend);
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  MoeConfig hierarchical = config;
  hierarchical.exchange = ExchangeKind::hierarchical;
  CHECK_THAT(message_of(hierarchical),
             Catch::Contains("the device layer runs the variable and padded exchanges only (exchange=hierarchical)"));
  MoeConfig bf16 = config;
  bf16.compute = experts::Compute::bf16;
  CHECK_THAT(message_of(bf16), Catch::Contains("the device layer computes fp32 only (set compute=fp32"));
  MoeConfig bf16_wire = config;
  bf16_wire.wire = WireFormat::bf16;
  CHECK(message_of(bf16_wire).empty());
  MoeConfig automatic = config;
  automatic.overlap_chunks = 0;
  CHECK(message_of(automatic) == "");  // auto runs (tested below)
  MoeConfig bad = config;
  bad.top_k = 9;
  CHECK_THAT(message_of(bad), Catch::Contains("top_k"));
}

TEST_CASE("check_finite: a NaN or infinity on one rank is every rank's error, in MoeLayer's words",
          "[device][layer][errors]") {
  auto world = comm::MpiCommunicator::world();
  MoeConfig config;
  config.num_experts = 2 * world->size();
  config.d_model = 4;
  config.d_hidden = 6;
  config.check_finite = true;
  const int bad = world->size() - 1;
  const std::string on_bad = " (check_finite is on) (rank " + std::to_string(bad) + ")";
  const auto message_of = [](auto&& call) -> std::string {
    try {
      call();
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  std::vector<float> x(20, 0.5f), y(20), dx(20), dy(20, 1.0f);
  if (world->rank() == bad) x[9] = std::nanf("");
  MoeLayer host(config, *world);
  ForwardContext ctx;
  device::HostBackend backend(*world);
  HostLayer layer(config, *world, backend);
  // Each rank's message is exactly this text, so every rank has the same.
  const std::string forward_error = message_of([&] { layer.forward(x.data(), 5, y.data()); });
  CHECK(forward_error == "input row 2 column 1 is NaN" + on_bad);
  CHECK(forward_error == message_of([&] { host.forward(x, y, ctx); }));

  // The layer stays usable; the backward checks the output gradient.
  x[9] = 0.5f;
  CHECK(message_of([&] { layer.forward(x.data(), 5, y.data()); }).empty());
  host.forward(x, y, ctx);
  if (world->rank() == bad) dy[4] = std::numeric_limits<float>::infinity();
  const std::string backward_error = message_of([&] { layer.backward(x.data(), dy.data(), dx.data()); });
  CHECK(backward_error == "grad_output row 1 column 0 is infinite" + on_bad);
  CHECK(backward_error == message_of([&] { host.backward(x, dy, dx, ctx); }));
}

TEST_CASE("ranks giving the device layer different configurations are told which fields differ",
          "[device][layer][errors]") {
  auto world = comm::MpiCommunicator::world();
  if (world->size() < 2) return;  // one rank cannot disagree with itself
  const int last = world->size() - 1;
  MoeConfig config;
  config.num_experts = 4 * world->size();
  config.d_model = 4;
  config.d_hidden = 6;
  if (world->rank() == last) config.top_k = 3;  // valid, but not what the others run
  device::HostBackend backend(*world);
  std::string message;
  try {
    HostLayer layer(config, *world, backend);
  } catch (const Error& e) {
    message = e.what();
  }
  // MoeLayer's message (tests/runtime/test_layer_mpi.cpp), the same on every rank.
  std::string others = last == 1 ? "rank 0" : "ranks 0";
  for (int r = 1; r < last; ++r) others += ", " + std::to_string(r);
  CHECK(message == "the ranks of layer '" + config.label + "' were given different configurations: top_k=2 (" +
                       others + "); top_k=3 (rank " + std::to_string(last) + ")");
}

TEST_CASE("overlap_chunks = auto: every rank chooses the same count, and it runs as that count fixed",
          "[device][layer][auto]") {
  auto world = comm::MpiCommunicator::world();
  // Scripted times: the count the gathered numbers give (see ScriptedTimes); 7 chunks over 2
  // local experts, so the chunks split experts.
  CHECK(check_auto<ScriptedTimes>(*world) == 7);
  // Measured times: whatever this machine gives, the same on every rank.
  check_auto<device::HostBackend>(*world);
}

TEST_CASE("the host backend's timing marks follow the thread's clock", "[device][auto]") {
  auto world = comm::MpiCommunicator::world();
  device::HostBackend backend(*world);
  backend.reserve_marks(3);
  backend.mark(device::Lane::compute, 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(2));
  backend.mark(device::Lane::comm, 1);
  backend.mark(device::Lane::compute, 2);
  CHECK(backend.seconds(0, 1) >= 2e-3);
  CHECK(backend.seconds(1, 2) >= 0);
  CHECK(backend.seconds(0, 2) >= backend.seconds(0, 1));
  CHECK(backend.seconds(1, 0) == -backend.seconds(0, 1));
  CHECK_THROWS_AS(backend.mark(device::Lane::compute, 3), std::out_of_range);
}
