#include "apps/mpi_program.hpp"

#include <boost/program_options/errors.hpp>
#include <cstdio>
#include <string>

#include "comm/mpi_environment.hpp"
#include "runtime/error.hpp"

namespace moe::apps {

int run_mpi_program(std::string_view program, int argc, char** argv,
                    const std::function<int(comm::MpiCommunicator& world)>& body) {
  comm::MpiEnvironment mpi(argc, argv);
  // Every rank prints the same line, so the message is there whichever rank's output one reads.
  // One write per line: mpirun forwards each rank's stderr as it comes, and a line written in
  // pieces (std::cerr is unbuffered) could interleave with another rank's.
  auto report = [&](const char* what) {
    const std::string line = std::string(program) + ": error: " + what + "\n";
    std::fwrite(line.data(), 1, line.size(), stderr);
    std::fflush(stderr);
  };
  try {
    auto world = comm::MpiCommunicator::world();
    return body(*world);
  } catch (const Error& e) {
    report(e.what());
    return 1;
  } catch (const UsageError& e) {
    report(e.what());
    return 2;
  } catch (const boost::program_options::error& e) {
    report(e.what());
    return 2;
  } catch (const std::exception& e) {
    report(e.what());
    mpi.abort(1);
  }
}

}  // namespace moe::apps
