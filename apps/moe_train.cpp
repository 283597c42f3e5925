// moe-train: trains a model built around expert-parallel MoE layers on a synthetic task whose
// clusters want different experts, prints how it learns, and saves checkpoints that resume
// exactly and load on another number of ranks.
//
//   mpirun -np 2 moe-train [--steps N] [--ep-size P] [--save DIR] [--resume DIR] [--json FILE]
//                          [--trace FILE]
//
// The job has ep_size x dp_size ranks; the batch (tokens per step, whole job) is split evenly
// over them. By default a dense baseline with the same active parameters per token trains on the
// same data afterwards, so the two can be compared.
#include <boost/program_options.hpp>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>

#include "apps/execution_options.hpp"
#include "apps/layer_options.hpp"
#include "apps/mpi_program.hpp"
#include "apps/trace_options.hpp"
#include "apps/trainer.hpp"
#include "runtime/error.hpp"

namespace po = boost::program_options;
using namespace moe;
using nlohmann::json;

namespace {

struct Options {
  apps::LayerOptions layer;
  apps::ExecutionOptions execution;
  apps::TraceOptions trace;
  apps::TrainOptions train;
  std::string baseline = "dense";
  std::string json_path;
};

std::optional<Options> parse_options(int argc, char** argv, const comm::Communicator& world) {
  Options o;
  apps::TrainOptions& t = o.train;
  // Defaults sized so the README's run (2 ranks) learns visibly in about a minute.
  o.layer.config.num_experts = 8;
  o.layer.config.d_model = 64;
  o.layer.config.d_hidden = 128;
  t.steps = 2000;
  t.batch = 1024;
  t.warmup_steps = 100;
  t.log_every = 100;
  t.eval_tokens = 4096;
  t.adam.lr = 3e-3;
  t.ep_size = world.size();
  po::options_description desc(
      "moe-train: train an MoE model on a clustered synthetic task\n"
      "usage: mpirun -np P moe-train [options]\noptions");
  desc.add_options()
      ("help", "print this help")
      ("steps", po::value(&t.steps)->default_value(t.steps), "train until this many steps are done")
      ("batch", po::value(&t.batch)->default_value(t.batch), "tokens per step over all ranks")
      ("lr", po::value(&t.adam.lr)->default_value(t.adam.lr, "0.003"), "Adam learning rate")
      ("warmup-steps", po::value(&t.warmup_steps)->default_value(t.warmup_steps),
       "steps of linear learning-rate warmup")
      ("layers", po::value(&t.model.num_layers)->default_value(t.model.num_layers), "MoE blocks")
      ("d-out", po::value(&t.model.d_out)->default_value(t.model.d_out), "target dimension")
      ("clusters", po::value(&t.task.clusters)->default_value(t.task.clusters),
       "clusters of the task, each with its own target function")
      ("task-hidden", po::value(&t.task.target_hidden)->default_value(t.task.target_hidden),
       "tanh units of each cluster's target function")
      ("noise", po::value(&t.task.noise)->default_value(t.task.noise, "0.5"),
       "spread of a cluster around its centre")
      ("seed", po::value(&t.task.seed)->default_value(t.task.seed), "seed of the task and the parameters")
      ("ep-size", po::value(&t.ep_size)->default_value(t.ep_size),
       "expert-parallel ranks (a divisor of the rank count; any --experts); dp = ranks / ep")
      ("log-every", po::value(&t.log_every)->default_value(t.log_every), "steps between progress lines")
      ("eval-tokens", po::value(&t.eval_tokens)->default_value(t.eval_tokens),
       "held-out tokens for the loss, purity and load at start and end")
      ("baseline", po::value(&o.baseline)->default_value(o.baseline),
       "dense: also train the dense baseline (one FFN of hidden k*h + h_s per block); none: skip it")
      ("save", po::value(&t.save_dir), "checkpoint directory (a step-N subdirectory per save)")
      ("save-every", po::value(&t.save_every)->default_value(500),
       "steps between checkpoints (0: only at the end); needs --save")
      ("keep", po::value(&t.keep)->default_value(t.keep), "checkpoints kept in --save (0: all)")
      ("resume", po::value(&t.resume_dir),
       "continue from the newest checkpoint in DIR (or from one step-N directory)")
      ("json", po::value(&o.json_path), "also write progress and the summary as JSON lines to FILE");
  apps::add_layer_options(desc, o.layer);
  apps::add_execution_options(desc, o.execution);
  apps::add_trace_options(desc, o.trace);
  po::variables_map vm;
  po::store(po::command_line_parser(argc, argv).options(desc).run(), vm);
  if (vm.count("help")) {
    if (world.rank() == 0) std::cout << desc << "\n";
    return std::nullopt;
  }
  po::notify(vm);
  apps::finish_layer_options(o.layer);
  apps::finish_execution_options(o.execution, o.layer.config);
  apps::finish_trace_options(o.trace);
  t.model.layer = o.layer.config;
  t.task.d_model = o.layer.config.d_model;
  t.task.d_out = t.model.d_out;
  if (t.steps < 0) throw apps::UsageError("--steps must be >= 0");
  if (t.batch < 1) throw apps::UsageError("--batch must be >= 1");
  if (t.log_every < 1) throw apps::UsageError("--log-every must be >= 1");
  if (t.eval_tokens < 1) throw apps::UsageError("--eval-tokens must be >= 1");
  if (t.warmup_steps < 0) throw apps::UsageError("--warmup-steps must be >= 0");
  if (t.save_every < 0) throw apps::UsageError("--save-every must be >= 0");
  if (t.keep < 0) throw apps::UsageError("--keep must be >= 0");
  if (t.save_dir.empty() && (!vm["save-every"].defaulted() || !vm["keep"].defaulted())) {
    throw apps::UsageError("--save-every and --keep need --save DIR");
  }
  if (t.model.num_layers < 1) throw apps::UsageError("--layers must be >= 1");
  if (t.model.d_out < 1) throw apps::UsageError("--d-out must be >= 1");
  if (t.task.clusters < 1) throw apps::UsageError("--clusters must be >= 1");
  if (t.task.target_hidden < 1) throw apps::UsageError("--task-hidden must be >= 1");
  if (!(t.task.noise >= 0)) throw apps::UsageError("--noise must be >= 0");
  if (!(t.adam.lr > 0)) throw apps::UsageError("--lr must be > 0");
  if (o.baseline != "dense" && o.baseline != "none") {
    throw apps::UsageError("--baseline '" + o.baseline + "' is not one of: dense, none");
  }
  return o;
}

json progress_json(const apps::Progress& p) {
  return {{"type", "progress"}, {"model", p.model},  {"step", p.step},
          {"loss", p.loss},     {"aux", p.aux},      {"z_loss", p.z},
          {"drop_rate", p.drop_rate}, {"load_max_over_mean", p.load_max_over_mean},
          {"tokens_per_s", p.tokens_per_s}};
}

json evaluation_json(const apps::Evaluation& e) {
  json load_max_over_mean = json::array();
  for (const auto& load : e.load) load_max_over_mean.push_back(apps::max_over_mean(load));
  return {{"loss", e.loss},     {"drop_rate", e.drop_rate}, {"purity", e.purity},
          {"top_expert", e.top_expert}, {"load", e.load}, {"load_max_over_mean", load_max_over_mean},
          {"selection_bias", e.selection_bias}};
}

// The layer settings that matter for training, in one short line.
std::string describe(const apps::TrainOptions& t) {
  const MoeConfig& c = t.model.layer;
  char text[320];
  std::snprintf(text, sizeof text, "%lld layers, E=%lld d=%lld h=%lld k=%lld cf=%g %s, %s gate",
                static_cast<long long>(t.model.num_layers), static_cast<long long>(c.num_experts),
                static_cast<long long>(c.d_model), static_cast<long long>(c.d_hidden),
                static_cast<long long>(c.top_k), c.capacity_factor,
                std::string(experts::to_string(c.activation)).c_str(), std::string(to_string(c.gate)).c_str());
  std::string line = text;
  if (c.bias_update_rate > 0) {
    std::snprintf(text, sizeof text, " (bias update %g)", c.bias_update_rate);
    line += text;
  }
  if (c.n_group > 1) {
    line += ", " + std::to_string(c.groups_per_token()) + " of " + std::to_string(c.n_group) + " groups";
  }
  if (c.has_shared_expert()) line += ", shared expert h=" + std::to_string(c.d_shared_hidden);
  std::snprintf(text, sizeof text, ", aux %g, %lld clusters", c.aux_loss_coef,
                static_cast<long long>(t.task.clusters));
  return line + text;
}

double mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? 0.0 : s / static_cast<double>(v.size());
}

void print_summary(const Options& o, int world_size, const apps::RunResult& moe,
                   const std::optional<apps::RunResult>& dense, double wall) {
  const apps::TrainOptions& t = o.train;
  std::printf("\nsummary: %d ranks (ep %d x dp %d), steps %lld..%lld of %lld tokens, %s\n",
              world_size, t.ep_size, world_size / t.ep_size, static_cast<long long>(moe.first_step),
              static_cast<long long>(moe.last_step), static_cast<long long>(t.batch),
              describe(t).c_str());
  std::printf("loss (MSE on %lld held-out tokens): start %.4f  end %.5f  (%.1fx lower)\n",
              static_cast<long long>(t.eval_tokens), moe.start.loss, moe.end.loss,
              moe.start.loss / moe.end.loss);
  if (dense) {
    std::printf("dense baseline (hidden %lld, same active parameters and steps): start %.4f  end %.5f\n",
                static_cast<long long>(apps::dense_hidden(t.model.layer)),
                dense->start.loss, dense->end.loss);
  }
  std::printf("routing purity (share of a cluster's tokens whose first choice is its most used expert):\n");
  for (std::size_t l = 0; l < moe.end.purity.size(); ++l) {
    std::printf("  layer %zu:", l);
    for (std::size_t k = 0; k < moe.end.purity[l].size(); ++k) {
      std::printf(" %.3f(e%lld)", moe.end.purity[l][k], static_cast<long long>(moe.end.top_expert[l][k]));
    }
    std::printf("  mean %.3f (at start %.3f)\n", mean(moe.end.purity[l]), mean(moe.start.purity[l]));
  }
  std::printf("expert load (share of top-k assignments on held-out tokens), drop rate %.2f%%:\n",
              100.0 * moe.end.drop_rate);
  for (std::size_t l = 0; l < moe.end.load.size(); ++l) {
    std::printf("  layer %zu:", l);
    for (double share : moe.end.load[l]) std::printf(" %5.1f%%", 100.0 * share);
    std::printf("  max/mean %.2f (at start %.2f)\n", apps::max_over_mean(moe.end.load[l]),
                apps::max_over_mean(moe.start.load[l]));
  }
  std::printf("time (rank 0):");
  for (const auto& [name, seconds] : moe.phase_seconds) std::printf(" %s %.2fs,", name.c_str(), seconds);
  if (dense) {
    double total = 0;
    for (const auto& entry : dense->phase_seconds) total += entry.second;
    std::printf(" dense baseline %.2fs,", total);
  }
  std::printf(" wall %.1fs\n", wall);
  std::printf("throughput: %.0f tokens/s (MoE training steps)", moe.tokens_per_s);
  if (dense) std::printf(", dense baseline %.0f tokens/s", dense->tokens_per_s);
  std::printf("\n");
  for (const std::string& dir : moe.saved) std::printf("saved %s\n", dir.c_str());
}

int run(comm::MpiCommunicator& world, const Options& o) {
  const auto start = std::chrono::steady_clock::now();
  apps::apply_watchdog(o.execution, world);
  const bool root = world.rank() == 0;
  // The --json file is opened now, so an unwritable path fails before any work, but emptied only
  // at its first line: a run refused on the way (a bad --resume, say) leaves an existing file as
  // it was.
  std::ofstream json_out;
  bool json_emptied = false;
  collectively(world, [&] {
    if (root && !o.json_path.empty()) {
      json_out.open(o.json_path, std::ios::in | std::ios::out);  // an existing file, kept as is
      if (!json_out) json_out.open(o.json_path, std::ios::out);  // or a new one
      if (!json_out) throw Error("--json: cannot write " + o.json_path);
    }
  });
  auto write_json = [&](const json& line) {
    if (!json_out.is_open()) return;
    if (!json_emptied) {
      std::error_code ec;
      std::filesystem::resize_file(o.json_path, 0, ec);
      if (ec) {
        std::fprintf(stderr, "moe-train: warning: cannot empty --json %s: %s\n",
                     o.json_path.c_str(), ec.message().c_str());
      }
      json_emptied = true;
    }
    json_out << line.dump() << "\n" << std::flush;
  };
  auto report = [&](const apps::Progress& p) {
    if (!root) return;
    if (p.model == "moe") {
      std::printf("step %lld  loss %.4f  aux %.4f  drop %.1f%%  load %.2f  %.0f tok/s\n",
                  static_cast<long long>(p.step), p.loss, p.aux, 100.0 * p.drop_rate,
                  p.load_max_over_mean, p.tokens_per_s);
    } else {
      std::printf("dense step %lld  loss %.4f  %.0f tok/s\n", static_cast<long long>(p.step), p.loss,
                  p.tokens_per_s);
    }
    std::fflush(stdout);
    write_json(progress_json(p));
  };
  if (root) {
    std::printf("moe-train: %d ranks (ep %d x dp %d), %s, batch %lld, %lld steps\n",
                world.size(), o.train.ep_size, world.size() / std::max(1, o.train.ep_size),
                describe(o.train).c_str(), static_cast<long long>(o.train.batch),
                static_cast<long long>(o.train.steps));
    std::fflush(stdout);
  }
  apps::start_trace(o.trace, world);  // the MoE model's training only, not the dense baseline
  const apps::RunResult moe = apps::train(world, o.train, report);
  apps::finish_trace(o.trace, world, "moe-train");

  std::optional<apps::RunResult> dense;
  if (o.baseline == "dense") {
    apps::TrainOptions b = o.train;
    b.model.kind = apps::BlockKind::dense;
    b.save_dir.clear();
    b.resume_dir.clear();  // the baseline always trains from step 0 to --steps
    if (root) std::printf("dense baseline: same data and steps, one FFN of hidden k*h + h_s per block\n");
    dense = apps::train(world, b, report);
  }
  const double wall =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (!root) return 0;
  print_summary(o, world.size(), moe, dense, wall);
  if (json_out.is_open()) {
    json s = {{"type", "summary"},
              {"ranks", world.size()},
              {"ep_size", o.train.ep_size},
              {"config", apps::run_config(o.train)},
              {"first_step", moe.first_step},
              {"last_step", moe.last_step},
              {"start", evaluation_json(moe.start)},
              {"end", evaluation_json(moe.end)},
              {"tokens_per_s", moe.tokens_per_s},
              {"phase_seconds", moe.phase_seconds},
              {"wall_seconds", wall},
              {"saved", moe.saved}};
    if (dense) {
      s["dense"] = {{"start", evaluation_json(dense->start)}, {"end", evaluation_json(dense->end)},
                    {"tokens_per_s", dense->tokens_per_s}};
    }
    write_json(s);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return apps::run_mpi_program("moe-train", argc, argv, [&](comm::MpiCommunicator& world) {
    const auto options = parse_options(argc, argv, world);
    return options ? run(world, *options) : 0;
  });
}
