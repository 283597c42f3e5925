// Command-line options for every layer setting of SPEC.md (shapes and what the layer computes),
// shared by the programs that build a layer from flags (moe-bench, moe-train). Generated from the
// configuration's field table; defaults are the SPEC's.
#pragma once

#include "apps/config_options.hpp"

namespace moe::apps {

struct LayerOptions {
  MoeConfig config;     // set the shapes a program wants as defaults before add_layer_options
  ConfigOptions given;
};

// Adds --num-experts, --d-model, --d-hidden, --d-shared-hidden, --top-k, --capacity-factor, ...
// (every shape and layer field). E, d and h default to 8, 512 and 1024 when `out` leaves them 0.
void add_layer_options(boost::program_options::options_description& options, LayerOptions& out);

// Parses the options into out.config; throws UsageError naming a bad value.
void finish_layer_options(LayerOptions& out);

}  // namespace moe::apps
