// --link-latency-us and --link-gbps: run a program over a simulated network link
// (comm/simulated_link.hpp) to study overlap and scaling on one machine. Shared by the programs
// that build a layer (moe-bench, moe-train).
//
//   LinkOptions link;
//   add_link_options(desc, link);                 // with the other options, before parsing
//   ... parse, notify ...
//   finish_link_options(link);                    // throws UsageError for a bad value
//   std::unique_ptr<comm::Communicator> storage;
//   comm::Communicator& ep = with_link(link, world, storage);   // world itself when unset
#pragma once

#include <boost/program_options.hpp>
#include <memory>
#include <string>

#include "comm/communicator.hpp"
#include "comm/simulated_link.hpp"

namespace moe::apps {

// Both 0 (the defaults): no simulated link, the real network as it is.
struct LinkOptions {
  comm::LinkModel model;  // latency_us from --link-latency-us, bandwidth_gbps from --link-gbps

  // True when either option asks for a link.
  bool enabled() const { return model.latency_us > 0 || model.bandwidth_gbps > 0; }
};

// Adds --link-latency-us (µs added once per communication operation) and --link-gbps (10^9 bytes
// per second per direction of each rank's link; 0 = unlimited).
void add_link_options(boost::program_options::options_description& options, LinkOptions& out);

// Checks the parsed values; throws UsageError naming the option when one is negative or not finite.
void finish_link_options(const LinkOptions& options);

// The communicator to run over: `inner` itself when no link is asked for, otherwise a
// SimulatedLinkCommunicator wrapping it, owned by `storage` (keep both alive while it is used).
// Its split() gives decorated communicators too, so groups made from it share the link.
comm::Communicator& with_link(const LinkOptions& options, comm::Communicator& inner,
                              std::unique_ptr<comm::Communicator>& storage);

// "none", or e.g. "latency 10 us, 12.5 GB/s" (for tables and JSON).
std::string link_summary(const LinkOptions& options);

}  // namespace moe::apps
