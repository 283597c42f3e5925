// MPI for a Python process: initialised once, when the module is imported (or reused when
// mpi4py or another library started it first), finalised at interpreter exit only if moe_ep
// started it. moe_ep's traffic runs on duplicated communicators, so it never matches messages of
// other MPI users in the same process.
#include <mpi.h>

#include <memory>

#include "comm/comm_error.hpp"
#include "comm/mpi_communicator.hpp"
#include "comm/mpi_environment.hpp"
#include "runtime/error.hpp"
#include "runtime/parallel_groups.hpp"
#include "runtime/python/bindings.hpp"

namespace moe::python {

namespace {

std::unique_ptr<comm::MpiEnvironment>& environment() {
  static std::unique_ptr<comm::MpiEnvironment> env;
  return env;
}

// Collective over MPI_COMM_WORLD on first use. Never destroyed before MPI_Finalize: a
// communicator freed after it skips MPI_Comm_free.
comm::MpiCommunicator& world() {
  static std::unique_ptr<comm::MpiCommunicator> world = comm::MpiCommunicator::world();
  return *world;
}

}  // namespace

void bind_mpi(py::module_& m) {
  static int argc = 0;
  static char** argv = nullptr;
  environment() = std::make_unique<comm::MpiEnvironment>(argc, argv);
  py::module_::import("atexit").attr("register")(py::cpp_function([] { environment().reset(); }));

  // Raised the same on every rank (the runtime agreed on it first), so catching it or exiting on
  // it leaves no rank waiting.
  py::register_exception<Error>(m, "Error");
  // A network failure on this rank: not agreed with the others.
  py::register_exception<comm::CommError>(m, "CommError");

  m.def("abort", [](int code) { MPI_Abort(MPI_COMM_WORLD, code); },
        "Ends every process of the job (MPI_Abort): for an error the ranks could not agree on.");

  m.def("world_size", [] {
    int size = 0;
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    return size;
  }, "Ranks in the job (not collective, unlike world()).");

  py::class_<comm::Communicator>(m, "Communicator")
      .def_property_readonly("rank", &comm::Communicator::rank)
      .def_property_readonly("size", &comm::Communicator::size)
      .def("set_timeout", &comm::Communicator::set_timeout, py::arg("seconds"),
           "Watchdog: abort the job when a collective has not completed after this long (0: off).")
      .def("barrier", &comm::Communicator::barrier, py::call_guard<py::gil_scoped_release>());
  py::class_<comm::MpiCommunicator, comm::Communicator>(m, "MpiCommunicator");

  m.def("world", &world, py::return_value_policy::reference,
        "The communicator over every rank of the job (collective on the first call).");

  py::class_<ParallelGroups>(m, "ParallelGroups")
      .def(py::init([](comm::Communicator& world_comm, int ep_size) {
             return std::make_unique<ParallelGroups>(ParallelGroups::create(world_comm, ep_size));
           }),
           py::arg("world"), py::arg("ep_size"), py::keep_alive<1, 2>(),
           "Collective. Splits the world into expert-parallel blocks of ep_size consecutive ranks and\n"
           "expert-data-parallel groups across them (world = ep_size x dp_size).")
      .def_readonly("ep_size", &ParallelGroups::ep_size)
      .def_readonly("dp_size", &ParallelGroups::dp_size)
      .def_property_readonly("ep", [](ParallelGroups& g) -> comm::Communicator& { return *g.ep; },
                             py::return_value_policy::reference_internal)
      .def_property_readonly("dp", [](ParallelGroups& g) -> comm::Communicator& { return *g.dp; },
                             py::return_value_policy::reference_internal);
}

}  // namespace moe::python
