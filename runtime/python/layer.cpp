// The layer as the Python module drives it: its tensors as numpy views of its own memory (zero
// copy; moe_ep/layer.py makes them torch Parameters), forward and backward on the caller's
// arrays, the forward contexts autograd keeps, gradient reduction and the bias update.
#include <algorithm>
#include <string>

#include "runtime/layer_tensors.hpp"
#include "runtime/moe_layer.hpp"
#include "runtime/parallel_groups.hpp"
#include "runtime/python/bindings.hpp"

namespace moe::python {

namespace {

// A MoeLayer with the groups it reduces over and the last forward's result (for the bias update).
struct Layer {
  Layer(const MoeConfig& config, ParallelGroups& g) : groups(g), layer(config, *g.ep) {}
  ParallelGroups& groups;
  MoeLayer layer;
  ForwardResult last;
};

py::dict stats_of(const ForwardResult& r) {
  py::dict d;
  d["aux_loss"] = r.aux_loss;
  d["z_loss"] = r.z_loss;
  d["total_tokens"] = r.stats.total_tokens;
  d["expert_counts"] = r.stats.expert_counts;
  d["expert_kept"] = r.stats.expert_kept;
  d["dropped_assignments"] = r.stats.dropped_assignments;
  d["dropped_tokens"] = r.stats.dropped_tokens;
  d["load_max_over_mean"] = r.stats.load_max_over_mean;
  return d;
}

py::list tensor_list(std::vector<LayerTensor> tensors, py::handle owner, bool grads) {
  py::list out;
  for (LayerTensor& t : tensors) {
    out.append(py::make_tuple(t.name, view(grads ? t.grad : t.value, t.shape, owner),
                              t.placement == Placement::expert ? "expert" : "replicated"));
  }
  return out;
}

void forward(Layer& self, const py::array& x, const py::array& y, ForwardContext& ctx) {
  const auto xs = float_memory(x, "x", false);
  const auto ys = float_memory(y, "y", true);
  // The caller (an optimizer) may have written the parameters since the last call.
  self.layer.experts().mark_changed();
  self.layer.shared_expert().mark_changed();
  py::gil_scoped_release release;
  self.last = self.layer.forward(xs, ys, ctx);
}

void backward(Layer& self, const py::array& x, const py::array& dy, const py::array& dx, ForwardContext& ctx,
              double grad_aux, double grad_z) {
  const auto xs = float_memory(x, "x", false);
  const auto dys = float_memory(dy, "dy", false);
  const auto dxs = float_memory(dx, "dx", true);
  py::gil_scoped_release release;
  self.layer.zero_grad();
  self.layer.backward(xs, dys, dxs, ctx, grad_aux, grad_z);
}

// The gradients in `grads` (parameters() order, each the parameter's shape) reduced in place.
void reduce(Layer& self, const py::list& grads, bool mean) {
  std::vector<LayerTensor> tensors = layer_parameters(self.layer);
  if (grads.size() != tensors.size()) {
    throw py::value_error("reduce_gradients: " + std::to_string(grads.size()) + " gradients for " +
                          std::to_string(tensors.size()) + " parameters");
  }
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const auto memory = float_memory(grads[i].cast<py::array>(), tensors[i].name.c_str(), true);
    if (memory.size() != tensors[i].value.size()) {
      throw py::value_error("reduce_gradients: the gradient of " + tensors[i].name + " has " +
                            std::to_string(memory.size()) + " values, the parameter " +
                            std::to_string(tensors[i].value.size()));
    }
    tensors[i].grad = memory;
  }
  py::gil_scoped_release release;
  reduce_gradients(tensors, self.groups, mean ? GradReduction::mean : GradReduction::sum);
}

// The bias update from the last forward's counts, summed over the data-parallel replicas so the
// bias (replicated over the whole world) stays identical on every rank.
void update_bias(Layer& self) {
  if (self.layer.config().gate != GateKind::sigmoid || self.layer.config().bias_update_rate == 0) return;
  ForwardResult counts;
  counts.stats.expert_counts = self.last.stats.expert_counts;
  py::gil_scoped_release release;
  if (self.groups.dp_size > 1) {
    self.groups.dp->allreduce(std::span<std::int64_t>(counts.stats.expert_counts), comm::ReduceOp::sum);
  }
  self.layer.update_selection_bias(counts);
}

}  // namespace

void bind_layer(py::module_& m) {
  py::class_<ForwardContext>(m, "ForwardContext")
      .def(py::init<>())
      .def("stats", [](const ForwardContext& c) { return stats_of(c.result()); })
      .def("selected_experts", [](const ForwardContext& c) {
        const auto e = c.selected_experts();
        py::array_t<std::int32_t> out(static_cast<py::ssize_t>(e.size()));
        std::copy(e.begin(), e.end(), out.mutable_data());
        return out.reshape({c.num_tokens(), static_cast<std::int64_t>(e.size()) / std::max<std::int64_t>(c.num_tokens(), 1)});
      }, "[T, k] int32: choice j of token t (SPEC.md section 3), descending score.")
      .def("selected_weights", [](const ForwardContext& c) {
        const auto w = c.selected_weights();
        py::array_t<float> out(static_cast<py::ssize_t>(w.size()));
        std::copy(w.begin(), w.end(), out.mutable_data());
        return out.reshape({c.num_tokens(), static_cast<std::int64_t>(w.size()) / std::max<std::int64_t>(c.num_tokens(), 1)});
      }, "[T, k] float32: each choice's weight after normalize_topk and scaling.")
      .def("kept", [](const ForwardContext& c) {
        const std::int64_t t_count = c.num_tokens();
        const std::int64_t k = t_count == 0 ? 0 : static_cast<std::int64_t>(c.selected_experts().size()) / t_count;
        py::array_t<bool> out({t_count, k});
        auto v = out.mutable_unchecked<2>();
        for (std::int64_t t = 0; t < t_count; ++t) {
          for (std::int64_t j = 0; j < k; ++j) v(t, j) = c.kept(t, j);
        }
        return out;
      }, "[T, k] bool: whether capacity kept each choice.");

  py::class_<Layer>(m, "Layer")
      .def(py::init<const MoeConfig&, ParallelGroups&>(), py::arg("config"), py::arg("groups"),
           py::keep_alive<1, 3>(), py::call_guard<py::gil_scoped_release>(),
           "Collective over groups.ep. Parameters start at zero.")
      .def_property_readonly("config", [](const Layer& l) { return l.layer.config(); })
      .def_property_readonly("local_experts", [](const Layer& l) { return l.layer.local_experts(); })
      .def_property_readonly("first_expert", [](const Layer& l) { return l.layer.first_expert(); })
      .def("parameters", [](py::object self) { return tensor_list(layer_parameters(self.cast<Layer&>().layer), self, false); },
           "[(name, array, placement)]: SPEC.md section 2 names; the arrays are the layer's own memory.")
      .def("gradients", [](py::object self) { return tensor_list(layer_parameters(self.cast<Layer&>().layer), self, true); },
           "[(name, array, placement)]: what the last backward wrote, parameters() order.")
      .def("buffers", [](py::object self) { return tensor_list(layer_buffers(self.cast<Layer&>().layer), self, false); })
      .def("forward", &forward, py::arg("x"), py::arg("y"), py::arg("context"),
           "Collective. y = layer(x) for this rank's tokens ([T, d] float32, C-contiguous).")
      .def("backward", &backward, py::arg("x"), py::arg("dy"), py::arg("dx"), py::arg("context"),
           py::arg("grad_aux") = 1.0, py::arg("grad_z") = 1.0,
           "Collective. Writes dx and replaces gradients() with this backward's (not reduced).")
      .def("last_stats", [](const Layer& l) { return stats_of(l.last); })
      .def("reduce_gradients", &reduce, py::arg("grads"), py::arg("mean") = true,
           "Collective over both groups: completes the gradients, given in parameters() order.")
      .def("update_selection_bias", &update_bias,
           "Collective over the data-parallel group: the sigmoid gate's bias update (SPEC.md section 3)\n"
           "from the last forward's counts.");
}

}  // namespace moe::python
