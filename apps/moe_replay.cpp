// moe-replay: runs one layer case (SPEC.md section 11) on P ranks and writes its result file.
//
//   mpirun -np P moe-replay --case CASE.safetensors --out RESULT.safetensors
//
// Each rank computes only its own tokens (the case's tokens_per_rank) and hosts only its own
// experts; rank 0 gathers the outputs and writes the result.
#include <boost/program_options.hpp>
#include <iostream>
#include <optional>

#include "apps/mpi_program.hpp"
#include "runtime/error.hpp"
#include "runtime/layer_case.hpp"
#include "runtime/moe_layer.hpp"

namespace po = boost::program_options;
using namespace moe;

namespace {

struct Options {
  std::string case_path;
  std::string out_path;
};

// nullopt after --help: the program then exits 0 on every rank.
std::optional<Options> parse_options(int argc, char** argv, int rank) {
  Options o;
  po::options_description desc(
      "moe-replay: run a layer case on P ranks and write its result\n"
      "usage: mpirun -np P moe-replay --case CASE --out RESULT\noptions");
  desc.add_options()
      ("help", "print this help")
      ("case", po::value(&o.case_path)->required(), "layer case (safetensors, SPEC.md section 11)")
      ("out", po::value(&o.out_path)->required(), "result file to write (safetensors)");
  po::variables_map vm;
  po::store(po::command_line_parser(argc, argv).options(desc).run(), vm);
  if (vm.count("help")) {
    if (rank == 0) std::cout << desc << "\n";
    return std::nullopt;
  }
  po::notify(vm);
  return o;
}

// Concatenates every rank's rows on rank 0 (an all-to-all where only rank 0 receives).
std::vector<float> gather_on_root(comm::Communicator& comm, std::span<const float> local) {
  const int size = comm.size();
  std::vector<std::int64_t> lengths(static_cast<std::size_t>(size));
  std::int64_t mine = static_cast<std::int64_t>(local.size());
  comm.allgather(reinterpret_cast<const std::byte*>(&mine),
                 reinterpret_cast<std::byte*>(lengths.data()), sizeof mine);
  std::vector<std::size_t> send_bytes(static_cast<std::size_t>(size), 0);
  std::vector<std::size_t> recv_bytes(static_cast<std::size_t>(size), 0);
  send_bytes[0] = local.size() * sizeof(float);
  std::size_t total = 0;
  if (comm.rank() == 0) {
    for (int r = 0; r < size; ++r) {
      recv_bytes[static_cast<std::size_t>(r)] = static_cast<std::size_t>(lengths[static_cast<std::size_t>(r)]) * sizeof(float);
      total += static_cast<std::size_t>(lengths[static_cast<std::size_t>(r)]);
    }
  }
  std::vector<float> all(total);
  comm.alltoallv(reinterpret_cast<const std::byte*>(local.data()), send_bytes,
                 reinterpret_cast<std::byte*>(all.data()), recv_bytes);
  return all;
}

int replay(comm::MpiCommunicator& world, const Options& options) {
  LayerCase layer_case;
  collectively(world, [&] {
    layer_case = read_layer_case(options.case_path);
    const auto entries = static_cast<int>(layer_case.tokens_per_rank.size());
    if (entries != world.size()) {
      throw Error(options.case_path + ": tokens_per_rank has " + std::to_string(entries) +
                  " entries but the job has " + std::to_string(world.size()) +
                  " ranks; run it with mpirun -np " + std::to_string(entries));
    }
  });

  MoeLayer layer(layer_case.config, world);
  load_parameters(layer_case, layer);
  const std::int64_t d = layer_case.config.d_model;
  const int rank = world.rank();
  const auto x = layer_case.file.tensors.at("input").f32().subspan(
      static_cast<std::size_t>(layer_case.first_row(rank) * d),
      static_cast<std::size_t>(layer_case.tokens_per_rank[static_cast<std::size_t>(rank)] * d));
  std::vector<float> y(x.size());
  ForwardContext ctx;
  const ForwardResult& result = layer.forward(x, y, ctx);

  const std::vector<float> output = gather_on_root(world, y);
  collectively(world, [&] {
    if (rank != 0) return;
    const std::int64_t experts = layer_case.config.num_experts;
    SafetensorsFile out;
    out.metadata = layer_case.file.metadata;
    out.tensors["output"] = Tensor::from_f32({layer_case.total_tokens(), d}, output);
    const float aux = static_cast<float>(result.aux_loss);
    const float z = static_cast<float>(result.z_loss);
    out.tensors["aux_loss"] = Tensor::from_f32({1}, std::span<const float>(&aux, 1));
    out.tensors["z_loss"] = Tensor::from_f32({1}, std::span<const float>(&z, 1));
    out.tensors["expert_counts"] = Tensor::from_i64({experts}, result.stats.expert_counts);
    out.tensors["expert_kept"] = Tensor::from_i64({experts}, result.stats.expert_kept);
    try {
      write_safetensors(options.out_path, out);
    } catch (const FileError& e) {
      throw Error(e.what());
    }
    std::cout << "moe-replay: " << layer_case.total_tokens() << " tokens on " << world.size()
              << " ranks, " << layer_case.config.summary() << "\n"
              << "moe-replay: kept " << (layer_case.total_tokens() * layer_case.config.top_k -
                                          result.stats.dropped_assignments)
              << " assignments, dropped " << result.stats.dropped_assignments << " ("
              << result.stats.dropped_tokens << " tokens lost every choice); aux_loss "
              << result.aux_loss << ", z_loss " << result.z_loss << "\n"
              << "moe-replay: wrote " << options.out_path << "\n";
  });
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return apps::run_mpi_program("moe-replay", argc, argv, [&](comm::MpiCommunicator& world) {
    const auto options = parse_options(argc, argv, world.rank());
    return options ? replay(world, *options) : 0;
  });
}
