// moe-replay: runs one layer case (SPEC.md section 11) on P ranks and writes its result file.
//
//   mpirun -np P moe-replay --case CASE.safetensors --out RESULT.safetensors
//
// Each rank computes only its own tokens (the case's tokens_per_rank) and hosts only its own
// experts; rank 0 gathers the outputs and writes the result. When the case has grad_output the
// backward runs too and every gradient of SPEC.md section 11 is written. Several --case/--out pairs
// run one after the other in the same job (the replay suite starts one job for all its cases).
//
// --dp-size N runs N data-parallel copies of the case's expert-parallel group on N x P ranks, each
// copy with the case's tokens; gradients are averaged over the copies, so they equal the plain
// run's (a check of the gradient reduction over expert-data-parallel groups).
//
// --device cuda runs the case through the device layer on one GPU per rank (NCCL); --device
// host-launcher runs the same device layer on the host (apps/device_option.hpp).
#include <boost/program_options.hpp>
#include <iostream>
#include <optional>

#include "apps/device_option.hpp"
#include "apps/execution_options.hpp"
#include "apps/mpi_program.hpp"
#include "comm/gather.hpp"
#include "runtime/device/layer_parameters.hpp"
#include "runtime/error.hpp"
#include "runtime/layer_case.hpp"
#include "runtime/moe_layer.hpp"
#include "runtime/parallel_groups.hpp"

namespace po = boost::program_options;
using namespace moe;

namespace {

struct Options {
  std::vector<std::string> case_paths;  // run one after the other, each writing its out_paths entry
  std::vector<std::string> out_paths;
  int dp_size = 1;
  apps::ExecutionOptions execution;  // how to run the case; never what it computes
  apps::DeviceOption device;
};

// nullopt after --help: the program then exits 0 on every rank.
std::optional<Options> parse_options(int argc, char** argv, int rank) {
  Options o;
  po::options_description desc(
      "moe-replay: run a layer case on P ranks and write its result\n"
      "usage: mpirun -np P moe-replay --case CASE --out RESULT [--case CASE --out RESULT ...]\noptions");
  desc.add_options()
      ("help", "print this help")
      ("case", po::value(&o.case_paths)->required(),
       "layer case (safetensors, SPEC.md section 11); may be given several times")
      ("out", po::value(&o.out_paths)->required(),
       "result file to write (safetensors), one per --case, in the same order")
      ("dp-size", po::value(&o.dp_size)->default_value(1),
       "data-parallel copies of the expert-parallel group (the job has dp-size x P ranks)");
  apps::add_execution_options(desc, o.execution);
  apps::add_device_option(desc, o.device);
  po::variables_map vm;
  po::store(po::command_line_parser(argc, argv).options(desc).run(), vm);
  if (vm.count("help")) {
    if (rank == 0) std::cout << desc << "\n";
    return std::nullopt;
  }
  po::notify(vm);
  if (o.case_paths.size() != o.out_paths.size()) {
    throw apps::UsageError(std::to_string(o.case_paths.size()) + " --case but " + std::to_string(o.out_paths.size()) +
                           " --out: give one --out per --case");
  }
  if (o.dp_size < 1) throw apps::UsageError("--dp-size must be >= 1");
  apps::finish_device_option(o.device);
  if (o.dp_size > 1 && o.device.kind != apps::DeviceKind::host) {
    throw apps::UsageError("--dp-size > 1 runs on --device host only");
  }
  MoeConfig check;  // the execution options are validated now, applied to the case's config later
  apps::finish_execution_options(o.execution, check);
  return o;
}

// What running the case produced on this rank of its expert-parallel group.
struct Outcome {
  std::vector<float> y, dx;  // this rank's rows (dx only with grad_output)
  ForwardResult result;
  std::vector<float> gate_grad;  // summed over the group (averaged over data-parallel copies)
  experts::ExpertShard expert_grads;  // this rank's experts
  experts::ExpertShard shared_grads;  // summed like the router's
  std::vector<float> selection_bias;  // after one update from this forward's counts
};

Outcome run_host(ParallelGroups& groups, const LayerCase& layer_case, std::span<const float> x,
                 std::span<const float> dy) {
  MoeLayer layer(layer_case.config, *groups.ep);
  load_parameters(layer_case, layer);
  Outcome out;
  out.y.resize(x.size());
  ForwardContext ctx;
  out.result = layer.forward(x, out.y, ctx);
  layer.update_selection_bias(out.result);
  if (layer_case.has_grad_output()) {
    out.dx.resize(x.size());
    layer.backward(x, dy, out.dx, ctx);
    reduce_gradients(layer, groups, GradReduction::mean);
  }
  out.gate_grad.assign(layer.gate_weight_grad().begin(), layer.gate_weight_grad().end());
  out.expert_grads = layer.expert_grads();
  out.shared_grads = layer.shared_expert_grads();
  out.selection_bias.assign(layer.selection_bias().begin(), layer.selection_bias().end());
  return out;
}

// The same through the device layer (--device cuda or host-launcher), one expert-parallel group.
Outcome run_device(apps::DeviceKind kind, comm::MpiCommunicator& ep, const LayerCase& layer_case,
                   std::span<const float> x, std::span<const float> dy) {
  const auto session = apps::open_device_session(
      kind, ep, layer_case.config, device::case_parameters(layer_case, ep.rank(), ep.size()));
  session->set_rows(x, dy);
  Outcome out;
  out.result = session->forward();
  session->update_selection_bias();
  out.y = session->output();
  if (layer_case.has_grad_output()) {
    session->backward();
    out.dx = session->input_grad();
  }
  device::LayerParameters grads = session->gradients();
  ep.allreduce(std::span<float>(grads.gate_weight), comm::ReduceOp::sum);
  for (std::int64_t e = 0; e < grads.shared_expert.num_experts(); ++e) {
    for (auto name : experts::expert_param_names(layer_case.config.activation)) {
      ep.allreduce(grads.shared_expert.param(e, name), comm::ReduceOp::sum);
    }
  }
  out.gate_grad = std::move(grads.gate_weight);
  out.expert_grads = std::move(grads.experts);
  out.shared_grads = std::move(grads.shared_expert);
  out.selection_bias = session->selection_bias();
  return out;
}

// Rank 0 of the world writes the result file (SPEC.md section 11).
void write_result(comm::MpiCommunicator& world, comm::Communicator& ep, const Options& options,
                  const LayerCase& layer_case, const Outcome& outcome, const std::string& out_path) {
  const std::int64_t d = layer_case.config.d_model;
  const int rank = ep.rank();
  // Only ep rank 0 holds the gathered tensors (and world rank 0 writes them).
  SafetensorsFile out;
  const auto put = [&](const std::string& name, std::vector<std::int64_t> shape,
                       std::span<const float> values) {
    if (rank == 0) out.tensors[name] = Tensor::from_f32(std::move(shape), values);
  };
  put("output", {layer_case.total_tokens(), d}, comm::gather_to_root(ep, outcome.y));
  if (layer_case.has_grad_output()) {
    put("grad_input", {layer_case.total_tokens(), d}, comm::gather_to_root(ep, outcome.dx));
    put("gate.weight.grad", {layer_case.config.num_experts, d}, outcome.gate_grad);
    // Each expert's gradient lives on its owner: gather every parameter kind in expert order.
    const experts::ExpertShard& grads = outcome.expert_grads;
    for (std::string_view param : experts::expert_param_names(layer_case.config.activation)) {
      std::vector<float> local;
      for (std::int64_t e = 0; e < grads.num_experts(); ++e) {
        const auto values = grads.param(e, param);
        local.insert(local.end(), values.begin(), values.end());
      }
      const std::vector<float> all = comm::gather_to_root(ep, local);
      const auto shape = grads.param_shape(param);
      const std::size_t per_expert = all.size() / static_cast<std::size_t>(layer_case.config.num_experts);
      for (std::int64_t e = 0; rank == 0 && e < layer_case.config.num_experts; ++e) {
        put("experts." + std::to_string(e) + "." + std::string(param) + ".grad", shape,
            std::span<const float>(all).subspan(static_cast<std::size_t>(e) * per_expert, per_expert));
      }
    }
    // The shared expert's gradient is replicated after the reduction, like the router's.
    const experts::ExpertShard& shared = outcome.shared_grads;
    for (std::int64_t e = 0; e < shared.num_experts(); ++e) {
      for (std::string_view param : experts::expert_param_names(layer_case.config.activation)) {
        put(std::string(kSharedPrefix) + std::string(param) + ".grad", shared.param_shape(param), shared.param(e, param));
      }
    }
  }
  if (layer_case.config.gate == GateKind::sigmoid) {
    put(std::string(kSelectionBias), {layer_case.config.num_experts}, outcome.selection_bias);
  }

  const ForwardResult& result = outcome.result;
  collectively(world, [&] {
    if (world.rank() != 0) return;
    const std::int64_t experts = layer_case.config.num_experts;
    out.metadata = layer_case.file.metadata;
    const float aux = static_cast<float>(result.aux_loss);
    const float z = static_cast<float>(result.z_loss);
    out.tensors["aux_loss"] = Tensor::from_f32({1}, std::span<const float>(&aux, 1));
    out.tensors["z_loss"] = Tensor::from_f32({1}, std::span<const float>(&z, 1));
    out.tensors["expert_counts"] = Tensor::from_i64({experts}, result.stats.expert_counts);
    out.tensors["expert_kept"] = Tensor::from_i64({experts}, result.stats.expert_kept);
    try {
      write_safetensors(out_path, out);
    } catch (const FileError& e) {
      throw Error(e.what());
    }
    std::cout << "moe-replay: " << layer_case.total_tokens() << " tokens on " << ep.size()
              << " ranks" << (options.dp_size > 1 ? " x " + std::to_string(options.dp_size) + " data-parallel copies" : "")
              << (options.device.kind == apps::DeviceKind::host ? "" : ", device layer on " + options.device.text)
              << ", " << layer_case.config.summary() << "\n"
              << "moe-replay: kept " << (layer_case.total_tokens() * layer_case.config.top_k -
                                          result.stats.dropped_assignments)
              << " assignments, dropped " << result.stats.dropped_assignments << " ("
              << result.stats.dropped_tokens << " tokens lost every choice); aux_loss "
              << result.aux_loss << ", z_loss " << result.z_loss << "\n"
              << "moe-replay: wrote " << out_path
              << (layer_case.has_grad_output() ? " with gradients" : " (no grad_output: forward only)") << "\n";
  });
}

void replay(comm::MpiCommunicator& world, const Options& options, const std::string& case_path,
            const std::string& out_path) {
  LayerCase layer_case;
  collectively(world, [&] {
    layer_case = read_layer_case(case_path);
    const auto entries = static_cast<int>(layer_case.tokens_per_rank.size());
    if (entries * options.dp_size != world.size()) {
      std::string why = case_path + ": tokens_per_rank has " + std::to_string(entries) +
                        " entries";
      if (options.dp_size > 1) why += " and --dp-size is " + std::to_string(options.dp_size);
      why += ", so the job needs " + std::to_string(entries * options.dp_size) + " ranks but has " +
             std::to_string(world.size()) + "; run it with mpirun -np " +
             std::to_string(entries * options.dp_size);
      if (options.dp_size > 1) why += " (entries x dp-size)";
      throw Error(why);
    }
  });
  ParallelGroups groups = ParallelGroups::create(world, world.size() / options.dp_size);
  comm::Communicator& ep = *groups.ep;

  apps::finish_execution_options(options.execution, layer_case.config);
  const std::int64_t d = layer_case.config.d_model;
  const int rank = ep.rank();
  const auto rows_of = [&](const char* tensor) -> std::span<const float> {
    const auto it = layer_case.file.tensors.find(tensor);
    if (it == layer_case.file.tensors.end()) return {};
    return it->second.f32().subspan(
        static_cast<std::size_t>(layer_case.first_row(rank) * d),
        static_cast<std::size_t>(layer_case.tokens_per_rank[static_cast<std::size_t>(rank)] * d));
  };
  const Outcome outcome =
      options.device.kind == apps::DeviceKind::host
          ? run_host(groups, layer_case, rows_of("input"), rows_of("grad_output"))
          : run_device(options.device.kind, world, layer_case, rows_of("input"), rows_of("grad_output"));
  write_result(world, ep, options, layer_case, outcome, out_path);
}

int replay_all(comm::MpiCommunicator& world, const Options& options) {
  apps::apply_watchdog(options.execution, world);
  for (std::size_t i = 0; i < options.case_paths.size(); ++i) replay(world, options, options.case_paths[i], options.out_paths[i]);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return apps::run_mpi_program("moe-replay", argc, argv, [&](comm::MpiCommunicator& world) {
    const auto options = parse_options(argc, argv, world.rank());
    return options ? replay_all(world, *options) : 0;
  });
}
