// Resharding on 4 ranks: a model trained a few steps at ep_size 2 x dp_size 2 is saved, then
// loaded at ep_size 1, 2 and 4 (dp 4, 2, 1). Every rank feeds the same tokens in every layout, so
// the layer outputs and predictions must be those of the model that was saved: bitwise in its own
// layout, within 1e-6 in the others.
#include <catch2/catch.hpp>

#include <cmath>

#include "apps/trainer.hpp"
#include "comm/mpi_communicator.hpp"
#include "runtime/checkpoint.hpp"

namespace {

using namespace moe;
namespace fs = std::filesystem;

apps::ModelConfig model_config() {
  apps::ModelConfig c;
  c.layer.num_experts = 4;
  c.layer.d_model = 16;
  c.layer.d_hidden = 24;
  c.num_layers = 2;
  c.d_out = 8;
  return c;
}

struct Outputs {
  std::vector<std::vector<float>> blocks;
  std::vector<float> predictions;
};

Outputs run_forward(apps::TrainModel& model, const apps::Batch& batch, std::int64_t group_tokens) {
  model.forward(batch.x, batch.target, group_tokens);
  Outputs out;
  for (std::int64_t l = 0; l < model.config().num_layers; ++l) {
    const auto y = model.block_output(l);
    out.blocks.emplace_back(y.begin(), y.end());
  }
  out.predictions.assign(model.predictions().begin(), model.predictions().end());
  return out;
}

// ‖a − b‖ / ‖b‖ (0 when bitwise equal).
double relative_difference(const std::vector<float>& a, const std::vector<float>& b) {
  REQUIRE(a.size() == b.size());
  double diff = 0, norm = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    diff += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
    norm += static_cast<double>(b[i]) * b[i];
  }
  return norm > 0 ? std::sqrt(diff / norm) : std::sqrt(diff);
}

}  // namespace

TEST_CASE("a checkpoint saved at ep_size 2 gives the same outputs at ep_size 1, 2, 4",
          "[checkpoint][reshard]") {
  auto world = comm::MpiCommunicator::world();
  REQUIRE(world->size() == 4);
  const int rank = world->rank();
  const fs::path root = fs::current_path() / "reshard_test_np4";
  if (rank == 0) fs::remove_all(root);
  world->barrier();

  apps::TaskConfig task_config;
  task_config.d_model = 16;
  task_config.clusters = 4;
  const apps::SyntheticTask task(task_config);
  // Per rank, in every layout. Enough that every expert gets well over 16 rows from each rank:
  // oneDNN's sgemm rounds differently below 16 rows, so with fewer a token's output could depend
  // on how many rows its expert batch has, which the layout changes (checked below).
  const std::int64_t tokens = 256;
  apps::Batch batch;

  // Train a few steps at ep 2 x dp 2 so parameters and moments are far from their initial values.
  ParallelGroups groups = ParallelGroups::create(*world, 2);
  apps::TrainModel model(model_config(), groups, *world);
  model.init(1);
  Adam adam(AdamConfig{});
  for (auto& p : model.parameters()) adam.add(p.name, p.value, p.grad);
  for (std::int64_t step = 0; step < 3; ++step) {
    task.make_batch("train", (step * 4 + rank) * tokens, tokens, batch);
    model.forward(batch.x, batch.target, 2 * tokens);
    model.backward();
    model.reduce_gradients();
    adam.step(1e-2);
  }
  task.make_batch("eval", rank * tokens, tokens, batch);
  const Outputs expected = run_forward(model, batch, 2 * tokens);
  CheckpointShard mine;
  mine.num_shards = 2;
  if (rank < 2) {
    mine.shard = rank;
    mine.tensors = apps::checkpoint_tensors(model, adam, true, rank == 0);
  }
  save_checkpoint(*world, root, 3, mine, nlohmann::json::object());

  for (int ep_size : {1, 2, 4}) {
    DYNAMIC_SECTION("ep_size " << ep_size) {
      ParallelGroups other_groups = ParallelGroups::create(*world, ep_size);
      apps::TrainModel loaded(model_config(), other_groups, *world);
      loaded.init(12345);  // different from the saved values: the load must overwrite all of them
      Adam loaded_adam(AdamConfig{});
      for (auto& p : loaded.parameters()) loaded_adam.add(p.name, p.value, p.grad);
      load_checkpoint(*world, open_checkpoint(*world, root),
                      apps::checkpoint_tensors(loaded, loaded_adam, true, true));
      const Outputs got = run_forward(loaded, batch, ep_size * tokens);
      for (std::int64_t l = 0; l < loaded.config().num_layers; ++l) {
        for (std::int64_t kept : loaded.moe_context(l).result().stats.expert_kept) {
          CHECK(kept >= 16);  // rows of each expert batch: above the sgemm threshold
        }
      }
      // The layout it was saved in gives bitwise the same model. Another layout changes the rows
      // of each expert GEMM, and oneDNN's kernels round by row count on some CPUs (seen on this
      // machine kind also with 16+ rows), so there SPEC.md section 9's tolerance applies.
      const double bound = ep_size == 2 ? 0.0 : 1e-6;
      for (std::size_t l = 0; l < expected.blocks.size(); ++l) {
        CHECK(relative_difference(got.blocks[l], expected.blocks[l]) <= bound);
      }
      CHECK(relative_difference(got.predictions, expected.predictions) <= bound);
    }
  }
}
