// The pieces of the _moe_ep extension module, each bound in its own file. Arrays cross the
// boundary through the buffer protocol (numpy), so the extension needs pybind11 only, never
// libtorch's C++ headers: moe_ep/*.py turns them into torch tensors with torch.from_numpy, which
// shares the memory.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <span>
#include <vector>

namespace moe::python {

namespace py = pybind11;

void bind_mpi(py::module_& m);     // mpi.cpp: MPI lifetime, communicators, groups, errors
void bind_config(py::module_& m);  // config.cpp: MoeConfig through its field table
void bind_layer(py::module_& m);   // layer.cpp: the layer, its forward contexts, gradients
void bind_files(py::module_& m);   // files.cpp: layer cases, result files, gathering rows

// A numpy array over `values` that keeps `owner` alive: no copy.
template <class T>
py::array_t<T> view(std::span<T> values, const std::vector<std::int64_t>& shape, py::handle owner) {
  std::vector<py::ssize_t> dims(shape.begin(), shape.end());
  return py::array_t<T>(dims, values.data(), owner);
}

// The memory of a C-contiguous float32 array; throws TypeError (naming `what`) for any other
// array, since a silent conversion would be a copy the runtime then writes to in vain.
std::span<float> float_memory(const py::array& array, const char* what, bool writable);

}  // namespace moe::python
