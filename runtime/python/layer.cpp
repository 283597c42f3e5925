// The public layer (<moe_ep/moe_ep.hpp>) as the Python module drives it: its tensors as numpy
// views of its own memory (zero copy; moe_ep/layer.py makes them torch Parameters), forward and
// backward on the caller's arrays, the forward contexts autograd keeps, gradient reduction over
// gradients torch holds, and the bias update.
#include <algorithm>
#include <string>

#include "moe_ep/moe_ep.hpp"
#include "runtime/python/bindings.hpp"

namespace moe::python {

namespace {

// A layer with the groups it reduces over (the Python object keeps them alive).
struct Layer {
  Layer(const MoeConfig& config, ParallelGroups& g) : groups(g), layer(config, *g.ep) {}
  ParallelGroups& groups;
  moe_ep::Layer layer;
};

py::dict stats_of(const moe_ep::ForwardContext& c) {
  const ForwardStats& s = c.stats();
  py::dict d;
  d["aux_loss"] = c.aux_loss();
  d["z_loss"] = c.z_loss();
  d["total_tokens"] = s.total_tokens;
  d["expert_counts"] = s.expert_counts;
  d["expert_kept"] = s.expert_kept;
  d["dropped_assignments"] = s.dropped_assignments;
  d["dropped_tokens"] = s.dropped_tokens;
  d["load_max_over_mean"] = s.load_max_over_mean;
  return d;
}

py::list tensor_list(const std::vector<LayerTensor>& tensors, py::handle owner, bool grads) {
  py::list out;
  for (const LayerTensor& t : tensors) {
    out.append(py::make_tuple(t.name, view(grads ? t.grad : t.value, t.shape, owner),
                              t.placement == Placement::expert ? "expert" : "replicated"));
  }
  return out;
}

// [T, k] copies of a context's routing.
template <class T>
py::array_t<T> per_choice(const moe_ep::ForwardContext& c, std::span<const T> values) {
  const std::int64_t tokens = c.num_tokens();
  const std::int64_t k = tokens == 0 ? 0 : static_cast<std::int64_t>(values.size()) / tokens;
  py::array_t<T> out({tokens, k});
  std::copy(values.begin(), values.end(), out.mutable_data());
  return out;
}

void forward(Layer& self, const py::array& x, const py::array& y, moe_ep::ForwardContext& ctx) {
  const auto xs = float_memory(x, "x", false);
  const auto ys = float_memory(y, "y", true);
  py::gil_scoped_release release;
  self.layer.forward(xs, ys, ctx);
}

void backward(Layer& self, const py::array& x, const py::array& dy, const py::array& dx,
              moe_ep::ForwardContext& ctx, double grad_aux, double grad_z) {
  const auto xs = float_memory(x, "x", false);
  const auto dys = float_memory(dy, "dy", false);
  const auto dxs = float_memory(dx, "dx", true);
  py::gil_scoped_release release;
  self.layer.zero_grad();
  self.layer.backward(xs, dys, dxs, ctx, grad_aux, grad_z);
}

// The gradients in `grads` (parameters() order, each the parameter's size) reduced in place.
void reduce(Layer& self, const py::list& grads, bool mean) {
  std::vector<LayerTensor> tensors = self.layer.parameters();
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

}  // namespace

void bind_layer(py::module_& m) {
  py::class_<moe_ep::ForwardContext>(m, "ForwardContext")
      .def(py::init<>())
      .def("stats", &stats_of, "The forward's losses and group-wide counts (SPEC.md section 10).")
      .def("selected_experts", [](const moe_ep::ForwardContext& c) { return per_choice(c, c.selected_experts()); },
           "[T, k] int32: choice j of token t (SPEC.md section 3), descending score.")
      .def("selected_weights", [](const moe_ep::ForwardContext& c) { return per_choice(c, c.selected_weights()); },
           "[T, k] float32: each choice's weight after normalize_topk and scaling.")
      .def("kept", [](const moe_ep::ForwardContext& c) {
        const std::int64_t tokens = c.num_tokens();
        const std::int64_t k = tokens == 0 ? 0 : static_cast<std::int64_t>(c.selected_experts().size()) / tokens;
        py::array_t<bool> out({tokens, k});
        auto v = out.mutable_unchecked<2>();
        for (std::int64_t t = 0; t < tokens; ++t) {
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
      .def("parameters", [](py::object self) { return tensor_list(self.cast<Layer&>().layer.parameters(), self, false); },
           "[(name, array, placement)]: SPEC.md section 2 names; the arrays are the layer's own memory.")
      .def("gradients", [](py::object self) { return tensor_list(self.cast<Layer&>().layer.parameters(), self, true); },
           "[(name, array, placement)]: what the last backward wrote, parameters() order.")
      .def("buffers", [](py::object self) { return tensor_list(self.cast<Layer&>().layer.buffers(), self, false); })
      .def("parameters_changed", [](Layer& l) { l.layer.parameters_changed(); },
           "The parameters were written (with compute=bf16 the next forward remakes its copies).")
      .def("forward", &forward, py::arg("x"), py::arg("y"), py::arg("context"),
           "Collective. y = layer(x) for this rank's tokens ([T, d] float32, C-contiguous).")
      .def("backward", &backward, py::arg("x"), py::arg("dy"), py::arg("dx"), py::arg("context"),
           py::arg("grad_aux") = 1.0, py::arg("grad_z") = 1.0,
           "Collective. Writes dx and replaces gradients() with this backward's (not reduced).")
      .def("reduce_gradients", &reduce, py::arg("grads"), py::arg("mean") = true,
           "Collective over both groups: completes the gradients, given in parameters() order.")
      .def("update_selection_bias", [](Layer& l, const moe_ep::ForwardContext& c) {
        py::gil_scoped_release release;
        l.layer.update_selection_bias(c, l.groups);
      }, py::arg("context"),
           "The sigmoid gate's bias update (SPEC.md section 3) from a forward's counts, summed over\n"
           "the data-parallel replicas (collective over groups.dp).");
}

}  // namespace moe::python
