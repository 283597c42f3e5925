// --link-latency-us and --link-gbps: run a program over a simulated network link
// (comm/simulated_link.hpp) to study overlap and scaling on one machine. With
// --link-inter-latency-us / --link-inter-gbps the link has two classes: those two between nodes
// (the ranks grouped by --ranks-per-node, or by host), the first two inside a node. Shared by the
// programs that build a layer (moe-bench, moe-train).
//
//   LinkOptions link;
//   add_link_options(desc, link);                 // with the other options, before parsing
//   ... parse, notify ...
//   finish_link_options(link);                    // throws UsageError for a bad value
//   std::unique_ptr<comm::Communicator> storage;
//   comm::Communicator& ep = with_link(link, world, storage, ranks_per_node);  // world when unset
#pragma once

#include <boost/program_options.hpp>
#include <memory>
#include <string>

#include "comm/communicator.hpp"
#include "comm/simulated_link.hpp"

namespace moe::apps {

// All unset (the defaults): no simulated link, the real network as it is.
struct LinkOptions {
  comm::LinkModel model;  // latency_us from --link-latency-us, bandwidth_gbps from --link-gbps
  // Between nodes, when given (>= 0); negative: as `model`.
  double inter_latency_us = -1;
  double inter_gbps = -1;

  bool two_classes() const { return inter_latency_us >= 0 || inter_gbps >= 0; }
  // True when any option asks for a link.
  bool enabled() const { return model.latency_us > 0 || model.bandwidth_gbps > 0 || two_classes(); }
  // The link between nodes: the --link-inter-* values where given, else the link inside a node.
  comm::LinkModel between_nodes() const {
    return {inter_latency_us >= 0 ? inter_latency_us : model.latency_us,
            inter_gbps >= 0 ? inter_gbps : model.bandwidth_gbps};
  }
};

// Adds --link-latency-us (µs added once per communication operation) and --link-gbps (10^9 bytes
// per second per direction of each rank's link; 0 = unlimited), and their --link-inter-* forms
// for the link between nodes.
void add_link_options(boost::program_options::options_description& options, LinkOptions& out);

// Checks the parsed values; throws UsageError naming the option when one is negative or not finite.
void finish_link_options(const LinkOptions& options);

// The communicator to run over: `inner` itself when no link is asked for, otherwise a
// SimulatedLinkCommunicator wrapping it, owned by `storage` (keep both alive while it is used).
// Its split() gives decorated communicators too, so groups made from it share the link. Collective
// with two classes: the nodes come from comm::discover_node_topology(inner, ranks_per_node).
comm::Communicator& with_link(const LinkOptions& options, comm::Communicator& inner,
                              std::unique_ptr<comm::Communicator>& storage, int ranks_per_node = 0);

// "none", or e.g. "latency 10 us, 12.5 GB/s", with two classes "... inside a node, ... between
// nodes" (for tables and JSON).
std::string link_summary(const LinkOptions& options);

}  // namespace moe::apps
