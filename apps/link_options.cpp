#include "apps/link_options.hpp"

#include <cmath>
#include <sstream>

#include "apps/mpi_program.hpp"

namespace moe::apps {

namespace po = boost::program_options;

void add_link_options(po::options_description& options, LinkOptions& out) {
  options.add_options()
      ("link-latency-us", po::value(&out.model.latency_us)->default_value(0.0, "0"),
       "simulated link: microseconds added once per communication operation (0 = none)")
      ("link-gbps", po::value(&out.model.bandwidth_gbps)->default_value(0.0, "0"),
       "simulated link: GB/s (10^9 bytes/s) per direction of each rank's link (0 = unlimited)");
}

void finish_link_options(const LinkOptions& options) {
  auto check = [](double value, const char* name) {
    if (!std::isfinite(value) || value < 0) {
      std::ostringstream message;
      message << "--" << name << " " << value << " must be a finite number >= 0";
      throw UsageError(message.str());
    }
  };
  check(options.model.latency_us, "link-latency-us");
  check(options.model.bandwidth_gbps, "link-gbps");
}

comm::Communicator& with_link(const LinkOptions& options, comm::Communicator& inner,
                              std::unique_ptr<comm::Communicator>& storage) {
  if (!options.enabled()) return inner;
  storage = std::make_unique<comm::SimulatedLinkCommunicator>(inner, options.model);
  return *storage;
}

std::string link_summary(const LinkOptions& options) {
  if (!options.enabled()) return "none";
  std::ostringstream text;
  text << "latency " << options.model.latency_us << " us, ";
  if (options.model.bandwidth_gbps > 0) {
    text << options.model.bandwidth_gbps << " GB/s";
  } else {
    text << "unlimited bandwidth";
  }
  return text.str();
}

}  // namespace moe::apps
