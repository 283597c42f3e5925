#include "apps/layer_options.hpp"

namespace moe::apps {

void add_layer_options(boost::program_options::options_description& options, LayerOptions& out) {
  MoeConfig& c = out.config;
  // Sizes a program has already set in `out` are its defaults; the others get moe-bench's.
  if (c.num_experts == 0) c.num_experts = 8;
  if (c.d_model == 0) c.d_model = 512;
  if (c.d_hidden == 0) c.d_hidden = 1024;
  add_config_options(options, c, {FieldKind::shape, FieldKind::layer}, out.given);
}

void finish_layer_options(LayerOptions& out) { finish_config_options(out.given, out.config); }

}  // namespace moe::apps
