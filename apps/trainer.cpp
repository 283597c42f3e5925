#include "apps/trainer.hpp"

#include <algorithm>
#include <array>
#include <chrono>

#include "runtime/checkpoint.hpp"
#include "runtime/config_fields.hpp"
#include "runtime/error.hpp"

namespace moe::apps {
namespace {

using Clock = std::chrono::steady_clock;
using nlohmann::json;

double since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

std::size_t sz(std::int64_t n) { return static_cast<std::size_t>(n); }

// Wall time of each phase of the loop on this rank.
struct PhaseTimes {
  double data = 0, forward = 0, backward = 0, reduce = 0, optimizer = 0, checkpoint = 0, eval = 0;
  std::vector<std::pair<std::string, double>> list() const {
    return {{"data", data},           {"forward", forward},       {"backward", backward},
            {"grad_allreduce", reduce}, {"optimizer", optimizer}, {"checkpoint", checkpoint},
            {"eval", eval}};
  }
};

// The whole job's view of a stretch of training steps (a progress line).
struct Window {
  // Sums over the window, one all-reduce for all of them.
  enum Sum { sse, target_values, aux, z, dropped, assignments, load_ratio, num_sums };
  std::array<double, num_sums> sums{};
  std::int64_t steps = 0;
  Clock::time_point start = Clock::now();

  // Group-level figures are counted once per expert-parallel group: by its rank 0.
  void add(const ForwardSummary& s, std::int64_t target_values_here, bool group_leader) {
    sums[sse] += s.sum_squared_error;
    sums[target_values] += static_cast<double>(target_values_here);
    if (group_leader) {
      sums[aux] += s.aux_loss;
      sums[z] += s.z_loss;
      sums[dropped] += static_cast<double>(s.dropped);
      sums[assignments] += static_cast<double>(s.assignments);
      sums[load_ratio] += s.load_max_over_mean;
    }
    ++steps;
  }

  // Collective over the world; resets the window.
  Progress finish(comm::Communicator& world, int dp_size, std::int64_t batch, std::int64_t step,
                  const char* model) {
    world.allreduce(std::span<double>(sums), comm::ReduceOp::sum);
    Progress p;
    p.model = model;
    p.step = step;
    const double group_steps = static_cast<double>(dp_size * steps);
    p.loss = sums[sse] / sums[target_values];
    p.aux = sums[aux] / group_steps;
    p.z = sums[z] / group_steps;
    p.drop_rate = sums[assignments] > 0 ? sums[dropped] / sums[assignments] : 0.0;
    p.load_max_over_mean = sums[load_ratio] / group_steps;
    p.tokens_per_s = static_cast<double>(batch * steps) / since(start);
    *this = Window{};
    return p;
  }
};

// Each expert's share of the assignments.
std::vector<double> load_shares(std::span<const std::int64_t> counts) {
  std::int64_t total = 0;
  for (std::int64_t n : counts) total += n;
  std::vector<double> shares(counts.size(), 0.0);
  for (std::size_t e = 0; e < counts.size(); ++e) {
    if (total > 0) shares[e] = static_cast<double>(counts[e]) / static_cast<double>(total);
  }
  return shares;
}

// Rows [first, first + count) of `total` split over `parts` as evenly as possible.
std::pair<std::int64_t, std::int64_t> share(std::int64_t total, int parts, int index) {
  const std::int64_t first = total * index / parts;
  return {first, total * (index + 1) / parts - first};
}

Evaluation evaluate(comm::Communicator& world, TrainModel& model, const SyntheticTask& task,
                    const TrainOptions& o, Batch& batch) {
  const int world_size = world.size(), rank = world.rank();
  const int ep = o.ep_size, group = rank / ep;
  const auto [first, count] = share(o.eval_tokens, world_size, rank);
  task.make_batch("eval", first, count, batch);
  const std::int64_t group_tokens =
      share(o.eval_tokens, world_size / ep, group).second;  // same split as ranks, by whole groups
  const ForwardSummary s = model.forward(batch.x, batch.target, group_tokens);
  const bool leader = rank % ep == 0;
  double sums[3] = {s.sum_squared_error, leader ? static_cast<double>(s.dropped) : 0.0,
                    leader ? static_cast<double>(s.assignments) : 0.0};
  world.allreduce(std::span<double>(sums), comm::ReduceOp::sum);
  Evaluation ev;
  ev.loss = sums[0] / static_cast<double>(o.eval_tokens * model.config().d_out);
  ev.drop_rate = sums[2] > 0 ? sums[1] / sums[2] : 0.0;

  const MoeConfig& c = model.config().layer;
  const std::int64_t K = task.config().clusters, E = c.num_experts, k = c.top_k;
  for (std::int64_t l = 0; l < model.config().num_layers; ++l) {
    const MoeLayer* layer = model.moe_layer(l);
    if (!layer) continue;
    // The layer's own routing (with a sigmoid gate, its selection bias and group limits decide,
    // not the largest logit): choice 0 of each token, counted per cluster.
    const ForwardContext& ctx = model.moe_context(l);
    const auto chosen = ctx.selected_experts();
    std::vector<std::int64_t> counts(sz(K * E + E), 0);  // [cluster, first choice], then load
    for (std::int64_t t = 0; t < count; ++t) ++counts[sz(batch.cluster[sz(t)] * E + chosen[sz(t * k)])];
    if (leader) {
      const auto& assigned = ctx.result().stats.expert_counts;
      std::copy(assigned.begin(), assigned.end(), counts.begin() + K * E);
    }
    world.allreduce(std::span<std::int64_t>(counts), comm::ReduceOp::sum);
    std::vector<double> purity(sz(K));
    std::vector<std::int64_t> top(sz(K));
    for (std::int64_t cluster = 0; cluster < K; ++cluster) {
      const auto row = counts.begin() + cluster * E;
      const auto best = std::max_element(row, row + E);
      std::int64_t total = 0;
      for (std::int64_t e = 0; e < E; ++e) total += row[e];
      purity[sz(cluster)] = total > 0 ? static_cast<double>(*best) / static_cast<double>(total) : 0.0;
      top[sz(cluster)] = best - row;
    }
    ev.purity.push_back(std::move(purity));
    ev.top_expert.push_back(std::move(top));
    ev.load.push_back(load_shares(std::span(counts).subspan(sz(K * E))));
    ev.selection_bias.emplace_back(layer->selection_bias().begin(), layer->selection_bias().end());
  }
  return ev;
}

json checkpoint_metadata(const TrainOptions& o, std::int64_t step, const Adam& adam) {
  // The data stream is counter-based: its whole state is (seed, next token), both saved here.
  return {{"step", step},
          {"adam_steps", adam.step_count()},
          {"config", run_config(o)},
          {"rng", {{"generator", "splitmix64, counter-based"},
                   {"seed", o.task.seed},
                   {"next_train_token", step * o.batch}}}};
}

// Collective. Restores parameters, moments and step; returns the step.
std::int64_t resume(comm::Communicator& world, const TrainOptions& o, TrainModel& model, Adam& adam,
                    std::int64_t& adam_steps) {
  const CheckpointIndex index = open_checkpoint(world, o.resume_dir);
  std::int64_t step = 0;
  collectively(world, [&] {
    const std::string differences = run_config_differences(index.metadata.at("config"), run_config(o));
    if (!differences.empty()) {
      throw Error("--resume " + index.dir.string() + ": the checkpoint was written with other " +
                  "model, task or optimizer options (" + differences +
                  "); pass the same ones to continue it");
    }
    step = index.metadata.at("step").get<std::int64_t>();
    adam_steps = index.metadata.at("adam_steps").get<std::int64_t>();
  });
  load_checkpoint(world, index, checkpoint_tensors(model, adam, true, true));
  model.parameters_changed();
  return step;
}

}  // namespace

double max_over_mean(const std::vector<double>& load) {
  if (load.empty()) return 0.0;
  return *std::max_element(load.begin(), load.end()) * static_cast<double>(load.size());
}

std::vector<CheckpointTensor> checkpoint_tensors(TrainModel& model, Adam& adam, bool experts,
                                                 bool replicated) {
  std::vector<CheckpointTensor> out;
  auto& params = model.parameters();
  for (std::size_t i = 0; i < params.size(); ++i) {
    const Parameter& p = params[i];
    if (p.expert ? !experts : !replicated) continue;
    out.push_back({p.name, p.shape, p.value});
    out.push_back({"optimizer.exp_avg." + p.name, p.shape, adam.exp_avg(i)});
    out.push_back({"optimizer.exp_avg_sq." + p.name, p.shape, adam.exp_avg_sq(i)});
  }
  if (replicated) {
    for (const Buffer& b : model.buffers()) out.push_back({b.name, b.shape, b.value});
  }
  return out;
}

json run_config(const TrainOptions& o) {
  json config = {{"model", o.model.kind == BlockKind::moe ? "moe" : "dense"},
                 {"layers", o.model.num_layers},
                 {"d_out", o.model.d_out},
                 {"clusters", o.task.clusters},
                 {"task_hidden", o.task.target_hidden},
                 {"noise", o.task.noise},
                 {"seed", o.task.seed},
                 {"batch", o.batch},
                 {"lr", o.adam.lr},
                 {"beta1", o.adam.beta1},
                 {"beta2", o.adam.beta2},
                 {"eps", o.adam.eps},
                 {"warmup_steps", o.warmup_steps}};
  // Every layer setting that changes what is computed, from the one table of config fields; not
  // the execution settings (exchange, overlap, wire, ...), which only change how fast.
  for (const ConfigField& f : config_fields()) {
    if (f.kind != FieldKind::execution) config[std::string(f.name)] = f.to_text(o.model.layer);
  }
  return config;
}

std::string run_config_differences(const json& saved, const json& now) {
  auto text = [](const json& value) {
    return value.is_string() ? value.get<std::string>() : value.is_null() ? "none" : value.dump();
  };
  // A layer field as `saved` gives it: its own text, the field's default when absent (written
  // before the field existed), normalised through the field so 0.0 and 0 read the same.
  const auto saved_field = [&](const ConfigField& f) -> std::string {
    const char* legacy = f.name == "num_experts" ? "experts" : nullptr;  // before SPEC version 2
    const std::string key(f.name);
    const json* value = saved.contains(key) ? &saved[key] : legacy && saved.contains(legacy) ? &saved[legacy] : nullptr;
    MoeConfig config;
    if (!value) return f.to_text(config);
    try {
      f.from_text(config, text(*value));
      return f.to_text(config);
    } catch (const Error&) {
      return text(*value);
    }
  };
  std::string differences;
  auto differ = [&](const std::string& key, const std::string& theirs, const std::string& mine) {
    differences += (differences.empty() ? "" : ", ") + key + " " + theirs + " in the checkpoint, " +
                   mine + " now";
  };
  for (const auto& [key, value] : now.items()) {
    const ConfigField* field = find_config_field(key);
    if (field && field->kind != FieldKind::execution) {
      const std::string theirs = saved_field(*field);
      if (theirs != text(value)) differ(key, theirs, text(value));
    } else {
      const json theirs = saved.contains(key) ? saved[key] : json();
      if (theirs != value) differ(key, text(theirs), text(value));
    }
  }
  return differences;
}

namespace {

// Collective. Refuses now rather than after training: a later checkpoint in --save belongs to
// another run.
void check_save_dir(comm::Communicator& world, const TrainOptions& o, std::int64_t first_step) {
  collectively(world, [&] {
    const auto existing = list_checkpoints(o.save_dir);
    if (!existing.empty() && existing.back().first > first_step) {
      throw Error("--save " + o.save_dir + " already holds a checkpoint at step " +
                  std::to_string(existing.back().first) + ", after this run's start at step " +
                  std::to_string(first_step) + ": continue it with --resume, or save elsewhere");
    }
  });
}

// Collective. Writes step `step`: data-parallel replica 0 writes, one shard per expert-parallel
// rank. Returns the directory.
std::string save_step(comm::Communicator& world, const TrainOptions& o, TrainModel& model,
                      Adam& adam, std::int64_t step) {
  const int rank = world.rank();
  CheckpointShard mine;
  mine.num_shards = o.ep_size;
  if (rank < o.ep_size) {
    mine.shard = rank;
    mine.tensors = checkpoint_tensors(model, adam, true, rank == 0);
  }
  return save_checkpoint(world, o.save_dir, step, mine, checkpoint_metadata(o, step, adam),
                         SaveOptions{o.keep})
      .string();
}

// Collective. Training step `step` (0-based) on this rank's share of the batch: forward, the
// selection-bias update, backward, gradient reduction and Adam; adds each phase's time.
ForwardSummary train_step(comm::Communicator& world, const TrainOptions& o, const SyntheticTask& task,
                          TrainModel& model, Adam& adam, std::int64_t step, Batch& batch,
                          PhaseTimes& times) {
  const std::int64_t per_rank = o.batch / world.size();
  const auto t0 = Clock::now();
  task.make_batch("train", step * o.batch + world.rank() * per_rank, per_rank, batch);
  const auto t1 = Clock::now();
  const ForwardSummary s = model.forward(batch.x, batch.target, per_rank * o.ep_size);
  model.update_selection_biases();  // the routing of this step is already decided
  const auto t2 = Clock::now();
  model.backward();
  const auto t3 = Clock::now();
  model.reduce_gradients();
  const auto t4 = Clock::now();
  const double done = static_cast<double>(step + 1);
  const double warmup = o.warmup_steps > 0 ? std::min(1.0, done / static_cast<double>(o.warmup_steps)) : 1.0;
  adam.step(o.adam.lr * warmup);
  model.parameters_changed();
  const auto t5 = Clock::now();
  auto seconds = [](Clock::time_point a, Clock::time_point b) {
    return std::chrono::duration<double>(b - a).count();
  };
  times.data += seconds(t0, t1);
  times.forward += seconds(t1, t2);
  times.backward += seconds(t2, t3);
  times.reduce += seconds(t3, t4);
  times.optimizer += seconds(t4, t5);
  return s;
}

}  // namespace

RunResult train(comm::Communicator& world, const TrainOptions& o,
                const std::function<void(const Progress&)>& on_progress) {
  const int world_size = world.size(), rank = world.rank();
  collectively(world, [&] {
    if (o.batch % world_size != 0) {
      throw Error("--batch " + std::to_string(o.batch) + " is not a multiple of the " +
                  std::to_string(world_size) + " ranks (each rank takes an equal share)");
    }
  });
  ParallelGroups groups = ParallelGroups::create(world, o.ep_size);
  const bool moe = o.model.kind == BlockKind::moe;
  SyntheticTask task(o.task);
  TrainModel model(o.model, groups, world);
  model.init(o.task.seed);
  Adam adam(o.adam);
  for (Parameter& p : model.parameters()) adam.add(p.name, p.value, p.grad);

  RunResult result;
  PhaseTimes times;
  auto timed = [](double& total, auto&& work) {
    const auto start = Clock::now();
    auto out = work();
    total += since(start);
    return out;
  };
  if (!o.resume_dir.empty()) {
    std::int64_t adam_steps = 0;
    result.first_step = timed(times.checkpoint, [&] { return resume(world, o, model, adam, adam_steps); });
    adam.set_step_count(adam_steps);
  }
  const bool saving = moe && !o.save_dir.empty();
  if (!o.save_dir.empty()) check_save_dir(world, o, result.first_step);

  Batch batch;
  result.start = timed(times.eval, [&] { return evaluate(world, model, task, o, batch); });
  Window window;
  const auto train_start = Clock::now();
  std::int64_t step = result.first_step, saved_step = result.first_step;
  auto save = [&] {
    result.saved.push_back(timed(times.checkpoint, [&] { return save_step(world, o, model, adam, step); }));
    saved_step = step;
  };
  while (step < o.steps) {
    const ForwardSummary s = train_step(world, o, task, model, adam, step, batch, times);
    ++step;
    window.add(s, o.batch / world_size * o.model.d_out, rank % o.ep_size == 0);
    if (step % o.log_every == 0 || step == o.steps) {
      on_progress(window.finish(world, groups.dp_size, o.batch, step, moe ? "moe" : "dense"));
    }
    if (saving && o.save_every > 0 && step % o.save_every == 0) save();
  }
  const double train_seconds = since(train_start);
  result.last_step = step;
  if (saving && saved_step != step) save();
  const std::int64_t trained = step - result.first_step;
  result.tokens_per_s = trained > 0 ? static_cast<double>(trained * o.batch) / train_seconds : 0.0;
  result.end = timed(times.eval, [&] { return evaluate(world, model, task, o, batch); });
  result.phase_seconds = times.list();
  return result;
}

}  // namespace moe::apps
