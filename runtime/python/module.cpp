// The extension module _moe_ep; moe_ep/__init__.py is its Python face.
#include <string>

#include "runtime/python/bindings.hpp"

namespace moe::python {

std::span<float> float_memory(const py::array& array, const char* what, bool writable) {
  if (!py::isinstance<py::array_t<float>>(array) || array.dtype().kind() != 'f' || array.itemsize() != 4) {
    throw py::type_error(std::string(what) + " must be float32");
  }
  if (!(array.flags() & py::array::c_style)) throw py::type_error(std::string(what) + " must be C-contiguous");
  if (writable && !array.writeable()) throw py::type_error(std::string(what) + " must be writable");
  return {static_cast<float*>(const_cast<void*>(array.data())), static_cast<std::size_t>(array.size())};
}

}  // namespace moe::python

PYBIND11_MODULE(_moe_ep, m) {
  m.doc() = "moe-ep's runtime (expert-parallel MoE layers over MPI); use it through the package moe_ep";
  moe::python::bind_mpi(m);
  moe::python::bind_config(m);
  moe::python::bind_layer(m);
  moe::python::bind_files(m);
}
