// Layer cases in, result files out (SPEC.md section 11), for moe_ep.replay: the same parser and
// writer moe-replay uses, with every failure agreed by all ranks.
#include <map>
#include <string>

#include "comm/gather.hpp"
#include "runtime/error.hpp"
#include "runtime/layer_case.hpp"
#include "runtime/python/bindings.hpp"
#include "runtime/safetensors.hpp"

namespace moe::python {

namespace {

py::array to_numpy(const Tensor& t) {
  std::vector<py::ssize_t> dims(t.shape.begin(), t.shape.end());
  if (t.dtype == DType::i64) {
    py::array_t<std::int64_t> out(dims);
    std::copy(t.i64().begin(), t.i64().end(), out.mutable_data());
    return out;
  }
  py::array_t<float> out(dims);
  std::copy(t.f32().begin(), t.f32().end(), out.mutable_data());
  return out;
}

// Collective over `world`: the case, and the same moe::Error on every rank when it cannot be read
// or does not fit the job (tokens_per_rank x dp_size must be the world's size).
py::dict read_case(const std::string& path, comm::Communicator& world, int dp_size) {
  LayerCase layer_case;
  collectively(world, [&] {
    layer_case = read_layer_case(path);
    const auto entries = static_cast<int>(layer_case.tokens_per_rank.size());
    if (entries * dp_size != world.size()) {
      std::string why = path + ": tokens_per_rank has " + std::to_string(entries) + " entries";
      if (dp_size > 1) why += " and --dp-size is " + std::to_string(dp_size);
      why += ", so the job needs " + std::to_string(entries * dp_size) + " ranks but has " +
             std::to_string(world.size()) + "; run it with mpirun -np " + std::to_string(entries * dp_size);
      if (dp_size > 1) why += " (entries x dp-size)";
      throw Error(why);
    }
  });
  py::dict tensors;
  for (const auto& [name, tensor] : layer_case.file.tensors) tensors[py::str(name)] = to_numpy(tensor);
  py::dict out;
  out["config"] = layer_case.config;
  out["tokens_per_rank"] = layer_case.tokens_per_rank;
  out["tensors"] = tensors;
  out["metadata"] = layer_case.file.metadata;
  return out;
}

// Collective over `world`; rank 0 writes `tensors` (float32 or int64 arrays) with `metadata`.
void write_result(comm::Communicator& world, const std::string& path, const py::dict& tensors,
                  const std::map<std::string, std::string>& metadata) {
  SafetensorsFile file;
  collectively(world, [&] {
    if (world.rank() != 0) return;
    file.metadata = metadata;
    for (const auto& [key, value] : tensors) {
      const std::string name = key.cast<std::string>();
      const py::array array = value.cast<py::array>();
      std::vector<std::int64_t> shape(array.shape(), array.shape() + array.ndim());
      if (py::isinstance<py::array_t<std::int64_t>>(array) && array.dtype().kind() == 'i') {
        const auto a = py::array_t<std::int64_t, py::array::c_style | py::array::forcecast>::ensure(array);
        file.tensors[name] = Tensor::from_i64(std::move(shape), {a.data(), static_cast<std::size_t>(a.size())});
      } else {
        const auto a = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(array);
        file.tensors[name] = Tensor::from_f32(std::move(shape), {a.data(), static_cast<std::size_t>(a.size())});
      }
    }
    write_safetensors(path, file);
  });
}

}  // namespace

void bind_files(py::module_& m) {
  m.def("read_layer_case", &read_case, py::arg("path"), py::arg("world"), py::arg("dp_size") = 1,
        "Collective. A layer case (SPEC.md section 11): {config, tokens_per_rank, tensors, metadata}.");
  m.def("write_result", &write_result, py::arg("world"), py::arg("path"), py::arg("tensors"),
        py::arg("metadata"), "Collective. World rank 0 writes a safetensors file.");
  m.def("gather_to_root", [](comm::Communicator& comm, const py::array& local) {
    const auto values = float_memory(local, "rows", false);
    std::vector<float> all;
    {
      py::gil_scoped_release release;
      all = comm::gather_to_root(comm, values);
    }
    py::array_t<float> out(static_cast<py::ssize_t>(all.size()));
    std::copy(all.begin(), all.end(), out.mutable_data());
    return out;
  }, py::arg("comm"), py::arg("local"),
        "Collective. Rank 0 gets every rank's float32 values concatenated in rank order; others get [].");
}

}  // namespace moe::python
