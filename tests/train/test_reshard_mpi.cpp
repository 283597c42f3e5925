// Resharding on 4 ranks: a model trained a few steps in one layout is saved, then loaded in every
// other layout, including expert counts that the rank count does not divide and more ranks than
// experts (ranks owning no expert). The loaded model, saved again, must give bitwise the same
// tensors (parameters, Adam moments, selection biases). Every rank feeds the same tokens in every
// layout, so the first layer routes every token as the saved model did, and outputs and
// predictions are bitwise those of the saved model in its own layout, within 1e-6 in the others
// (an expert's GEMM has other rows there, and oneDNN's kernels round by row count on some CPUs).
//
// The models are SPEC version 2 ones: sigmoid gate whose selection bias moves during training,
// group-limited routing, routed scaling and a shared expert.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <map>

#include "apps/trainer.hpp"
#include "comm/mpi_communicator.hpp"
#include "runtime/checkpoint.hpp"
#include "runtime/safetensors.hpp"

namespace {

using namespace moe;
namespace fs = std::filesystem;

apps::ModelConfig model_config(std::int64_t num_experts) {
  apps::ModelConfig c;
  c.layer.num_experts = num_experts;
  c.layer.d_model = 16;
  c.layer.d_hidden = 24;
  c.layer.d_shared_hidden = 12;
  c.layer.gate = GateKind::sigmoid;
  c.layer.bias_update_rate = 0.01;
  c.layer.routed_scaling_factor = 2.5;
  if (num_experts == 2) c.layer.top_k = 1;  // with k = E every expert gets every token: no bias moves
  if (num_experts % 4 == 0) {
    c.layer.n_group = 4;
    c.layer.topk_group = 2;
  }
  c.num_layers = 2;
  c.d_out = 8;
  return c;
}

struct Outputs {
  std::vector<std::vector<float>> blocks;
  std::vector<float> predictions;
  std::vector<std::int32_t> first_layer_experts;  // the routing of the first layer
  std::vector<bool> first_layer_kept;
};

double relative_error(const std::vector<float>& got, const std::vector<float>& want) {
  double diff = 0, norm = 0;
  for (std::size_t i = 0; i < want.size(); ++i) {
    diff += (static_cast<double>(got[i]) - want[i]) * (static_cast<double>(got[i]) - want[i]);
    norm += static_cast<double>(want[i]) * want[i];
  }
  return got.size() == want.size() ? std::sqrt(diff / norm) : 1.0;
}

Outputs run_forward(apps::TrainModel& model, const apps::Batch& batch, std::int64_t group_tokens) {
  model.forward(batch.x, batch.target, group_tokens);
  Outputs out;
  for (std::int64_t l = 0; l < model.config().num_layers; ++l) {
    const auto y = model.block_output(l);
    out.blocks.emplace_back(y.begin(), y.end());
  }
  out.predictions.assign(model.predictions().begin(), model.predictions().end());
  const ForwardContext& ctx = model.moe_context(0);
  out.first_layer_experts.assign(ctx.selected_experts().begin(), ctx.selected_experts().end());
  const std::int64_t k = model.config().layer.top_k;
  for (std::int64_t t = 0; t < ctx.num_tokens(); ++t) {
    for (std::int64_t j = 0; j < k; ++j) out.first_layer_kept.push_back(ctx.kept(t, j));
  }
  return out;
}

// Every tensor of a checkpoint by name (read on one rank, no collective).
std::map<std::string, std::vector<float>> read_all(const fs::path& root) {
  const auto steps = list_checkpoints(root);
  std::map<std::string, std::vector<float>> out;
  if (steps.empty()) return out;
  for (const auto& entry : fs::directory_iterator(steps.back().second)) {
    if (entry.path().extension() != ".safetensors") continue;
    for (const auto& [name, tensor] : read_safetensors(entry.path()).tensors) {
      const auto values = tensor.f32();
      out[name].assign(values.begin(), values.end());
    }
  }
  return out;
}

// A training checkpoint of `model` written by the expert-parallel ranks of replica 0.
void save(comm::Communicator& world, const fs::path& root, std::int64_t step,
          apps::TrainModel& model, Adam& adam, int ep_size) {
  CheckpointShard mine;
  mine.num_shards = ep_size;
  if (world.rank() < ep_size) {
    mine.shard = world.rank();
    mine.tensors = apps::checkpoint_tensors(model, adam, true, world.rank() == 0);
  }
  save_checkpoint(world, root, step, mine, nlohmann::json::object());
}

// The largest difference of a replicated tensor between the ranks (0: identical everywhere).
float spread_over_ranks(comm::Communicator& world, std::span<const float> values) {
  std::vector<float> most(values.begin(), values.end()), least(values.begin(), values.end());
  world.allreduce(std::span<float>(most), comm::ReduceOp::max);
  world.allreduce(std::span<float>(least), comm::ReduceOp::min);
  float spread = 0;
  for (std::size_t i = 0; i < most.size(); ++i) spread = std::max(spread, most[i] - least[i]);
  return spread;
}

// Trains `config` 3 steps at save_ep x (4 / save_ep) on the 4 ranks, saves it, and checks that it
// loads at every ep size of `load_eps` (3 runs on ranks 0..2, the last rank idle).
void check_reshard(comm::MpiCommunicator& world, const std::string& name,
                   const apps::ModelConfig& config, int save_ep, std::vector<int> load_eps) {
  const int rank = world.rank();
  const fs::path root = fs::current_path() / "reshard_test_np4" / name;
  if (rank == 0) fs::remove_all(root);
  world.barrier();

  apps::TaskConfig task_config;
  task_config.d_model = config.layer.d_model;
  task_config.clusters = 4;
  const apps::SyntheticTask task(task_config);
  const std::int64_t tokens = 128;  // per rank, in every layout
  apps::Batch batch;

  // Train a few steps so parameters, moments and selection biases are far from their initial
  // values.
  ParallelGroups groups = ParallelGroups::create(world, save_ep);
  apps::TrainModel model(config, groups, world);
  model.init(1);
  Adam adam(AdamConfig{});
  for (auto& p : model.parameters()) adam.add(p.name, p.value, p.grad);
  for (std::int64_t step = 0; step < 3; ++step) {
    task.make_batch("train", (step * 4 + rank) * tokens, tokens, batch);
    model.forward(batch.x, batch.target, save_ep * tokens);
    model.update_selection_biases();
    model.backward();
    model.reduce_gradients();
    adam.step(1e-2);
    model.parameters_changed();
  }
  REQUIRE(model.buffers().size() == 2);  // one selection bias per layer
  for (const apps::Buffer& b : model.buffers()) {
    CHECK(spread_over_ranks(world, b.value) == 0.0f);  // replicas agree
    CHECK(std::any_of(b.value.begin(), b.value.end(), [](float v) { return v != 0.0f; }));
  }
  task.make_batch("eval", rank * tokens, tokens, batch);
  const Outputs expected = run_forward(model, batch, save_ep * tokens);
  save(world, root / "saved", 3, model, adam, save_ep);
  const auto saved = rank == 0 ? read_all(root / "saved") : std::map<std::string, std::vector<float>>{};

  for (int ep_size : load_eps) {
    DYNAMIC_SECTION(name << ": saved at ep_size " << save_ep << ", loaded at ep_size " << ep_size) {
      // 3 ranks of 4: the last one takes no part.
      const int ranks = 4 % ep_size == 0 ? 4 : ep_size;
      const auto used = world.split(rank < ranks ? 0 : 1, rank);
      if (rank < ranks) {
        ParallelGroups other_groups = ParallelGroups::create(*used, ep_size);
        apps::TrainModel loaded(config, other_groups, *used);
        loaded.init(12345);  // different from the saved values: the load must overwrite all of them
        Adam loaded_adam(AdamConfig{});
        for (auto& p : loaded.parameters()) loaded_adam.add(p.name, p.value, p.grad);
        load_checkpoint(*used, open_checkpoint(*used, root / "saved"),
                        apps::checkpoint_tensors(loaded, loaded_adam, true, true));
        loaded.parameters_changed();
        const Outputs got = run_forward(loaded, batch, ep_size * tokens);
        CHECK(got.first_layer_experts == expected.first_layer_experts);
        CHECK(got.first_layer_kept == expected.first_layer_kept);
        const double bound = ep_size == save_ep ? 0.0 : 1e-6;
        for (std::size_t l = 0; l < expected.blocks.size(); ++l) {
          CHECK(relative_error(got.blocks[l], expected.blocks[l]) <= bound);
        }
        CHECK(relative_error(got.predictions, expected.predictions) <= bound);
        // Saved again from this layout: the same tensors, bit for bit.
        const fs::path again = root / ("again_ep" + std::to_string(ep_size));
        save(*used, again, 3, loaded, loaded_adam, ep_size);
        if (rank == 0) {
          const auto resaved = read_all(again);
          CHECK(resaved.size() == saved.size());
          for (const auto& [tensor, values] : saved) {
            INFO(tensor);
            CHECK((resaved.count(tensor) && resaved.at(tensor) == values));
          }
          CHECK(saved.count("layers.1.moe.gate.e_score_correction_bias"));
          CHECK(saved.count("optimizer.exp_avg_sq.layers.0.moe.shared_expert.w2.bias"));
          CHECK_FALSE(saved.count("optimizer.exp_avg.layers.0.moe.gate.e_score_correction_bias"));
        }
      }
      world.barrier();
    }
  }
}

}  // namespace

TEST_CASE("a v2 checkpoint saved at ep_size 2 x dp 2 gives bitwise identical outputs at ep_size 1, 2, 3, 4",
          "[checkpoint][reshard]") {
  auto world = comm::MpiCommunicator::world();
  REQUIRE(world->size() == 4);
  // E = 8 on 3 ranks: 2, 3 and 3 experts.
  check_reshard(*world, "e8", model_config(8), 2, {1, 2, 3, 4});
}

TEST_CASE("a checkpoint saved by more ranks than experts loads on any rank count",
          "[checkpoint][reshard]") {
  auto world = comm::MpiCommunicator::world();
  REQUIRE(world->size() == 4);
  // E = 3 on 4 ranks: rank 0, which writes the replicated tensors, owns no expert; on 2 ranks
  // the experts split 1 + 2.
  check_reshard(*world, "e3", model_config(3), 4, {1, 2, 3, 4});
  // E = 2 on 4 ranks: ranks 0 and 2 own no expert, so shard 3 of 4 holds no tensor at all.
  check_reshard(*world, "e2", model_config(2), 4, {1, 3, 4});
}
