// The trainer's selection-bias update (SPEC.md section 3, auxiliary-loss-free balancing) on 1, 2
// and 4 ranks, in every layout ep x dp: after a training forward each MoE layer's bias moves by
// rate · sign(mean − c_e), where c_e counts the assignments to expert e before dropping over the
// whole job's tokens (every replica's), so the bias stays identical on every rank. The counts are
// recomputed here from each rank's routing (ForwardContext::selected_experts), not taken from the
// layer's statistics.
#include <catch2/catch.hpp>

#include <cmath>

#include "apps/train_model.hpp"
#include "apps/synthetic_task.hpp"
#include "comm/mpi_communicator.hpp"

namespace {

using namespace moe;

apps::ModelConfig model_config(GateKind gate, double rate) {
  apps::ModelConfig c;
  c.layer.num_experts = 4;
  c.layer.d_model = 8;
  c.layer.d_hidden = 8;
  c.layer.gate = gate;
  c.layer.bias_update_rate = rate;
  c.layer.capacity_factor = 0.5;  // drops, which the update must not see
  c.num_layers = 2;
  c.d_out = 2;
  return c;
}

std::vector<int> layouts(int world_size) {
  std::vector<int> eps = {1};
  if (world_size >= 2) eps.push_back(2);
  if (world_size == 4) eps.push_back(4);
  return eps;
}

}  // namespace

TEST_CASE("the trainer moves the selection bias by rate * sign(mean - count) of the job's counts",
          "[train][bias_update]") {
  auto world = comm::MpiCommunicator::world();
  const int rank = world->rank();
  const double rate = 0.125;  // exact in binary, like every bias below
  apps::TaskConfig task_config;
  task_config.d_model = 8;
  task_config.d_out = 2;
  task_config.clusters = 3;
  const apps::SyntheticTask task(task_config);
  for (int ep : layouts(world->size())) {
    DYNAMIC_SECTION("ep_size " << ep) {
      ParallelGroups groups = ParallelGroups::create(*world, ep);
      apps::TrainModel model(model_config(GateKind::sigmoid, rate), groups, *world);
      model.init(3);
      REQUIRE(model.buffers().size() == 2);
      CHECK(model.buffers()[0].name == "layers.0.moe.gate.e_score_correction_bias");
      CHECK(model.buffers()[1].shape == std::vector<std::int64_t>{4});
      // A starting bias that steers the routing: expert 3 chosen far too often.
      for (apps::Buffer& b : model.buffers()) {
        for (std::size_t e = 0; e < b.value.size(); ++e) b.value[e] = 0.25f * static_cast<float>(e);
      }
      std::vector<std::vector<float>> before;
      for (const apps::Buffer& b : model.buffers()) before.emplace_back(b.value.begin(), b.value.end());

      apps::Batch batch;
      const std::int64_t tokens = 40 + 8 * rank;  // uneven shares
      task.make_batch("train", 1000 * rank, tokens, batch);
      model.forward(batch.x, batch.target, tokens * ep);
      // The expected update, from every rank's own routing summed over the world.
      std::vector<std::int64_t> counts(2 * 4, 0);
      for (std::int64_t l = 0; l < 2; ++l) {
        const auto& ctx = model.moe_context(l);
        for (std::int32_t e : ctx.selected_experts()) ++counts[static_cast<std::size_t>(l * 4 + e)];
      }
      world->allreduce(std::span<std::int64_t>(counts), comm::ReduceOp::sum);
      model.update_selection_biases();

      for (std::size_t l = 0; l < 2; ++l) {
        const std::span<const std::int64_t> c(counts.data() + l * 4, 4);
        const double mean = static_cast<double>(c[0] + c[1] + c[2] + c[3]) / 4.0;
        int up = 0, down = 0;
        for (std::size_t e = 0; e < 4; ++e) {
          const double gap = mean - static_cast<double>(c[e]);
          const double sign = gap > 0 ? 1.0 : gap < 0 ? -1.0 : 0.0;
          INFO("layer " << l << " expert " << e << " count " << c[e] << " mean " << mean);
          CHECK(model.buffers()[l].value[e] == static_cast<float>(before[l][e] + rate * sign));
          up += sign > 0;
          down += sign < 0;
        }
        CHECK(up > 0);  // the biased start leaves some experts over and some under the mean
        CHECK(down > 0);
        // Identical on every rank of the world.
        std::vector<float> most(model.buffers()[l].value.begin(), model.buffers()[l].value.end());
        std::vector<float> least = most;
        world->allreduce(std::span<float>(most), comm::ReduceOp::max);
        world->allreduce(std::span<float>(least), comm::ReduceOp::min);
        CHECK(most == least);
      }
      // The over-used expert 3 gets less of the next batch's selection score.
      CHECK(model.buffers()[0].value[3] == 0.75f - static_cast<float>(rate));
    }
  }
}

TEST_CASE("without a rate, or with the softmax gate, no selection bias moves",
          "[train][bias_update]") {
  auto world = comm::MpiCommunicator::world();
  ParallelGroups groups = ParallelGroups::create(*world, world->size());
  apps::TaskConfig task_config;
  task_config.d_model = 8;
  task_config.d_out = 2;
  const apps::SyntheticTask task(task_config);
  apps::Batch batch;
  task.make_batch("train", 64 * world->rank(), 64, batch);

  apps::TrainModel softmax(model_config(GateKind::softmax, 0.0), groups, *world);
  softmax.init(3);
  CHECK(softmax.buffers().empty());  // no selection bias with the softmax gate
  softmax.forward(batch.x, batch.target, 64 * world->size());
  softmax.update_selection_biases();

  apps::TrainModel still(model_config(GateKind::sigmoid, 0.0), groups, *world);
  still.init(3);
  REQUIRE(still.buffers().size() == 2);
  still.buffers()[1].value[2] = 0.5f;
  still.forward(batch.x, batch.target, 64 * world->size());
  still.update_selection_biases();
  CHECK(still.buffers()[0].value[0] == 0.0f);
  CHECK(still.buffers()[1].value[2] == 0.5f);
}
