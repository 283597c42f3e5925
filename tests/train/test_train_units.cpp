// Single-process pieces of moe-train: LayerNorm's backward against finite differences, Adam's
// update against its formula, the synthetic task's independence from how tokens are split, and
// what a resume must match (the run configuration, from the config table).
#include <catch2/catch.hpp>

#include <cmath>

#include "apps/layer_norm.hpp"
#include "apps/synthetic_task.hpp"
#include "apps/trainer.hpp"
#include "runtime/adam.hpp"
#include "runtime/config_fields.hpp"
#include "runtime/initialization.hpp"

using namespace moe;

namespace {

// L = Σ c ⊙ LayerNorm(x): a scalar whose gradient is the backward of dy = c.
double layer_norm_objective(const std::vector<float>& x, std::int64_t d,
                            const std::vector<float>& w, const std::vector<float>& b,
                            const std::vector<float>& c) {
  std::vector<float> y(x.size());
  apps::LayerNormSaved saved;
  apps::layer_norm_forward(x, d, w, b, y, saved);
  double total = 0;
  for (std::size_t i = 0; i < y.size(); ++i) total += static_cast<double>(c[i]) * y[i];
  return total;
}

}  // namespace

TEST_CASE("LayerNorm backward matches finite differences", "[train][layer_norm]") {
  const std::int64_t rows = 3, d = 6;
  std::vector<float> x(rows * d), w(d), b(d), c(rows * d);
  fill_normal(x, 1, "x");
  fill_normal(w, 1, "w");
  fill_normal(b, 1, "b");
  fill_normal(c, 1, "c");
  std::vector<float> y(x.size()), dx(x.size()), dw(d, 0.0f), db(d, 0.0f);
  apps::LayerNormSaved saved;
  apps::layer_norm_forward(x, d, w, b, y, saved);
  apps::layer_norm_backward(x, d, w, saved, c, dx, dw, db);

  const float h = 1e-2f;
  auto numeric = [&](std::vector<float>& v, std::size_t i) {
    const float keep = v[i];
    v[i] = keep + h;
    const double up = layer_norm_objective(x, d, w, b, c);
    v[i] = keep - h;
    const double down = layer_norm_objective(x, d, w, b, c);
    v[i] = keep;
    return (up - down) / (2.0 * h);
  };
  for (std::size_t i = 0; i < x.size(); ++i) CHECK(dx[i] == Approx(numeric(x, i)).margin(2e-3));
  for (std::size_t i = 0; i < w.size(); ++i) CHECK(dw[i] == Approx(numeric(w, i)).margin(2e-3));
  for (std::size_t i = 0; i < b.size(); ++i) CHECK(db[i] == Approx(numeric(b, i)).margin(2e-3));
}

TEST_CASE("Adam follows its update rule and counts steps", "[train][adam]") {
  std::vector<float> value = {1.0f, -2.0f, 0.5f};
  std::vector<float> grad = {0.1f, -0.3f, 0.0f};
  Adam adam(AdamConfig{0.01, 0.9, 0.999, 1e-8});
  adam.add("p", value, grad);
  CHECK_THROWS(adam.add("p", value, grad));
  adam.step(0.01);
  // Step 1: bias-corrected m = g and v = g², so the update is lr·g/(|g| + eps).
  CHECK(value[0] == Approx(1.0 - 0.01).epsilon(1e-6));
  CHECK(value[1] == Approx(-2.0 + 0.01).epsilon(1e-6));
  CHECK(value[2] == 0.5f);
  CHECK(adam.step_count() == 1);
  CHECK(adam.exp_avg(0)[0] == Approx(0.01).epsilon(1e-4));
  CHECK(adam.exp_avg_sq(0)[1] == Approx(0.001 * 0.09).epsilon(1e-4));

  // Step 2 with the gradient unchanged, by the formula in double.
  const double m = 0.9 * 0.01 + 0.1 * 0.1, v = 0.999 * 0.001 * 0.01 + 0.001 * 0.01;
  const double expected = (1.0 - 0.01) - 0.01 * (m / (1 - 0.81)) / (std::sqrt(v / (1 - 0.998001)) + 1e-8);
  adam.step(0.01);
  CHECK(value[0] == Approx(expected).epsilon(1e-5));
}

TEST_CASE("the synthetic task is a pure function of the token index", "[train][task]") {
  apps::TaskConfig config;
  config.d_model = 16;
  const apps::SyntheticTask task(config);
  apps::Batch whole, tail;
  task.make_batch("train", 100, 40, whole);
  task.make_batch("train", 130, 10, tail);
  CHECK(std::equal(tail.x.begin(), tail.x.end(), whole.x.begin() + 30 * 16));
  CHECK(std::equal(tail.target.begin(), tail.target.end(), whole.target.begin() + 30 * 8));
  CHECK(std::equal(tail.cluster.begin(), tail.cluster.end(), whole.cluster.begin() + 30));
  for (std::int64_t c : whole.cluster) CHECK((c >= 0 && c < config.clusters));

  apps::Batch eval;
  task.make_batch("eval", 100, 40, eval);
  CHECK(eval.x != whole.x);  // streams are independent
  config.seed = 2;
  apps::Batch other;
  apps::SyntheticTask(config).make_batch("train", 100, 40, other);
  CHECK(other.target != whole.target);

  // Targets are nonlinear in the input and of order one (the loss starts near their variance).
  double sum_sq = 0;
  for (float t : whole.target) sum_sq += static_cast<double>(t) * t;
  const double variance = sum_sq / static_cast<double>(whole.target.size());
  CHECK(variance > 0.1);
  CHECK(variance < 2.0);
}

TEST_CASE("run_config holds every field that changes what is computed, and only those",
          "[train][run_config]") {
  apps::TrainOptions o;
  o.model.layer.num_experts = 8;
  o.model.layer.d_model = 64;
  o.model.layer.d_hidden = 128;
  o.batch = 1024;
  const nlohmann::json config = apps::run_config(o);
  for (const ConfigField& f : config_fields()) {
    INFO(f.name);
    CHECK(config.contains(std::string(f.name)) == (f.kind != FieldKind::execution));
  }
  CHECK(config.at("gate") == "softmax");
  CHECK(config.at("num_experts") == "8");
  CHECK(apps::run_config_differences(config, config).empty());

  // What changes the computation is named; what only changes the speed is not compared.
  apps::TrainOptions other = o;
  other.model.layer.gate = GateKind::sigmoid;
  other.model.layer.bias_update_rate = 0.001;
  other.model.layer.overlap_chunks = 4;
  CHECK(apps::run_config_differences(config, apps::run_config(other)) ==
        "bias_update_rate 0 in the checkpoint, 0.001 now, gate softmax in the checkpoint, sigmoid now");
  other = o;
  other.model.layer.wire = WireFormat::bf16;
  other.model.layer.exchange = ExchangeKind::padded;
  CHECK(apps::run_config_differences(config, apps::run_config(other)).empty());
}

TEST_CASE("a checkpoint written before SPEC version 2 resumes with the version-2 defaults",
          "[train][run_config]") {
  apps::TrainOptions o;
  o.model.layer.num_experts = 8;
  o.model.layer.d_model = 64;
  o.model.layer.d_hidden = 128;
  o.batch = 1024;
  o.adam.lr = 0.003;
  // The run configuration as version 1 wrote it: numbers, "experts", no version-2 field.
  const nlohmann::json v1 = {
      {"model", "moe"}, {"layers", 2}, {"d_out", 8}, {"experts", 8}, {"d_model", 64},
      {"d_hidden", 128}, {"top_k", 2}, {"capacity_factor", 1.25}, {"min_capacity", 4},
      {"drop_policy", "position"}, {"activation", "gelu"}, {"normalize_topk", false},
      {"aux_loss_coef", 0.01}, {"z_loss_coef", 0.0}, {"clusters", 8}, {"task_hidden", 8},
      {"noise", 0.5}, {"seed", 1}, {"batch", 1024}, {"lr", 0.003}, {"beta1", 0.9},
      {"beta2", 0.999}, {"eps", 1e-8}, {"warmup_steps", 0}};
  CHECK(apps::run_config_differences(v1, apps::run_config(o)).empty());
  o.model.layer.d_shared_hidden = 32;
  o.model.layer.num_experts = 16;
  CHECK(apps::run_config_differences(v1, apps::run_config(o)) ==
        "d_shared_hidden 0 in the checkpoint, 32 now, num_experts 8 in the checkpoint, 16 now");
}
