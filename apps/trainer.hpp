// The training loop of moe-train, apart from its command line and its printing: data sharded by
// rank, forward, backward, gradient reduction, Adam, evaluation (loss, routing purity, expert
// load), and checkpoints that save, resume and reshard (runtime/checkpoint.hpp).
#pragma once

#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "apps/synthetic_task.hpp"
#include "apps/train_model.hpp"
#include "comm/communicator.hpp"
#include "runtime/adam.hpp"
#include "runtime/checkpoint.hpp"

namespace moe::apps {

struct TrainOptions {
  ModelConfig model;
  TaskConfig task;             // task.seed also seeds the parameters
  AdamConfig adam;
  std::int64_t steps = 0;      // train until this many updates are done
  std::int64_t batch = 0;      // tokens per step over the whole job, split evenly over the ranks
  std::int64_t warmup_steps = 0;  // learning rate rises linearly over these, then stays
  std::int64_t log_every = 0;
  std::int64_t eval_tokens = 0;
  int ep_size = 1;
  std::string save_dir;        // empty: no checkpoints
  std::int64_t save_every = 0; // 0: only at the end
  int keep = 2;
  std::string resume_dir;      // empty: start from step 0
};

// One progress line: means over the steps since the previous one.
struct Progress {
  std::string model;           // "moe" or "dense"
  std::int64_t step = 0;
  double loss = 0;             // mean squared error of the task
  double aux = 0;              // load-balancing loss, summed over the layers
  double z = 0;                // router z-loss
  double drop_rate = 0;        // dropped / top-k assignments
  double load_max_over_mean = 0;  // busiest expert's assignments / the mean (1: balanced),
                                  // averaged over the MoE layers and the steps
  double tokens_per_s = 0;
};

struct Evaluation {
  double loss = 0;                                   // MSE on the evaluation tokens
  double drop_rate = 0;
  // Per MoE layer and cluster: the share of the cluster's tokens whose first choice is the
  // cluster's most used expert, and that expert.
  std::vector<std::vector<double>> purity;
  std::vector<std::vector<std::int64_t>> top_expert;
  // Per MoE layer and expert: its share of all top-k assignments (before dropping).
  std::vector<std::vector<double>> load;
  // Per MoE layer: gate.e_score_correction_bias (zeros with the softmax gate).
  std::vector<std::vector<float>> selection_bias;
};

// The busiest expert's share of the load over the mean share (1 when balanced; 0 for no load).
double max_over_mean(const std::vector<double>& load);

struct RunResult {
  std::int64_t first_step = 0;  // where this run started (the checkpoint's step on resume)
  std::int64_t last_step = 0;
  Evaluation start, end;
  double tokens_per_s = 0;      // over the training steps of this run
  std::vector<std::pair<std::string, double>> phase_seconds;  // this rank's wall time
  std::vector<std::string> saved;  // checkpoint directories written
};

// The tensors of a training checkpoint this rank holds: its parameters (replicated ones and/or
// this rank's experts) and their Adam moments, named "optimizer.exp_avg.<name>" and
// "optimizer.exp_avg_sq.<name>", and with the replicated ones the buffers (the selection biases,
// which have no moments). The same list serves to save and to load.
std::vector<CheckpointTensor> checkpoint_tensors(TrainModel& model, Adam& adam, bool experts,
                                                 bool replicated);

// What a resumed run must share with the run that wrote the checkpoint: model, task, optimizer
// and batch, and every MoeConfig field that changes what the layer computes (the shape and layer
// fields of runtime/config_fields.hpp, as text under their names); not the rank counts nor the
// execution fields, which may change.
nlohmann::json run_config(const TrainOptions& options);

// "" when a checkpoint written with run configuration `saved` can continue as `now`, else the
// differences ("d_model 64 in the checkpoint, 32 now, ..."). A layer field the checkpoint does
// not name has its default, which gives the layer of SPEC version 1 (checkpoints written before
// version 2 name no version-2 field and call num_experts "experts").
std::string run_config_differences(const nlohmann::json& saved, const nlohmann::json& now);

// Collective over `world`. Trains options.model (MoE or dense) and reports every log_every steps.
// Checkpoints are written and read only for the MoE model when save_dir/resume_dir are set.
RunResult train(comm::Communicator& world, const TrainOptions& options,
                const std::function<void(const Progress&)>& on_progress);

}  // namespace moe::apps
