#include "apps/link_options.hpp"

#include <cmath>
#include <sstream>
#include <vector>

#include "comm/node_topology.hpp"

#include "apps/mpi_program.hpp"

namespace moe::apps {

namespace po = boost::program_options;

void add_link_options(po::options_description& options, LinkOptions& out) {
  options.add_options()
      ("link-latency-us", po::value(&out.model.latency_us)->default_value(0.0, "0"),
       "simulated link: microseconds added once per communication operation (0 = none)")
      ("link-gbps", po::value(&out.model.bandwidth_gbps)->default_value(0.0, "0"),
       "simulated link: GB/s (10^9 bytes/s) per direction of each rank's link (0 = unlimited)")
      ("link-inter-latency-us", po::value(&out.inter_latency_us)->default_value(-1.0, "as --link-latency-us"),
       "simulated link between nodes (--ranks-per-node, or the hosts): its latency; the two "
       "options above are then the link inside a node")
      ("link-inter-gbps", po::value(&out.inter_gbps)->default_value(-1.0, "as --link-gbps"),
       "simulated link between nodes: its GB/s per direction (0 = unlimited)");
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
  // Unset is the default's negative value; a value given must be a real one.
  if (options.inter_latency_us != -1.0) check(options.inter_latency_us, "link-inter-latency-us");
  if (options.inter_gbps != -1.0) check(options.inter_gbps, "link-inter-gbps");
}

comm::Communicator& with_link(const LinkOptions& options, comm::Communicator& inner,
                              std::unique_ptr<comm::Communicator>& storage, int ranks_per_node) {
  if (!options.enabled()) return inner;
  if (!options.two_classes()) {
    storage = std::make_unique<comm::SimulatedLinkCommunicator>(inner, options.model);
    return *storage;
  }
  const comm::NodeTopology topology = comm::discover_node_topology(inner, ranks_per_node);
  std::vector<int> nodes(static_cast<std::size_t>(inner.size()));
  for (int r = 0; r < inner.size(); ++r) nodes[static_cast<std::size_t>(r)] = topology.node_of(r);
  storage = std::make_unique<comm::SimulatedLinkCommunicator>(inner, options.model, options.between_nodes(),
                                                             std::move(nodes));
  return *storage;
}

namespace {

std::string model_text(const comm::LinkModel& model) {
  std::ostringstream text;
  text << "latency " << model.latency_us << " us, ";
  if (model.bandwidth_gbps > 0) {
    text << model.bandwidth_gbps << " GB/s";
  } else {
    text << "unlimited bandwidth";
  }
  return text.str();
}

}  // namespace

std::string link_summary(const LinkOptions& options) {
  if (!options.enabled()) return "none";
  if (!options.two_classes()) return model_text(options.model);
  return model_text(options.model) + " inside a node, " + model_text(options.between_nodes()) +
         " between nodes";
}

}  // namespace moe::apps
