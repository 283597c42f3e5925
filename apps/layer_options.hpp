// Command-line options for every layer setting of SPEC.md, shared by the programs that build a
// layer from flags (moe-bench, moe-train). Defaults are the SPEC's.
#pragma once

#include <boost/program_options.hpp>

#include "runtime/config.hpp"

namespace moe::apps {

// Text-valued options are kept as text until finish_layer_options checks them, so a bad value is
// reported with the option's name.
struct LayerOptions {
  MoeConfig config;
  std::string drop_policy = "position";
  std::string activation = "gelu";
};

// Adds --experts, --d-model, --d-hidden, --top-k, --capacity-factor, --min-capacity,
// --drop-policy, --activation, --normalize-topk, --aux-loss-coef, --z-loss-coef. Their defaults are
// the values already in `out` (E, d and h default to 8, 512 and 1024 when `out` leaves them 0).
void add_layer_options(boost::program_options::options_description& options, LayerOptions& out);

// Parses the text-valued options into out.config; throws UsageError naming a bad value.
void finish_layer_options(LayerOptions& out);

}  // namespace moe::apps
