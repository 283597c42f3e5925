#include "apps/layer_options.hpp"

#include "apps/mpi_program.hpp"

namespace moe::apps {

namespace po = boost::program_options;

void add_layer_options(po::options_description& options, LayerOptions& out) {
  MoeConfig& c = out.config;
  // Sizes a program has already set in `out` are its defaults; the others get moe-bench's.
  const auto or_default = [](std::int64_t set, std::int64_t fallback) { return set > 0 ? set : fallback; };
  options.add_options()
      ("experts", po::value(&c.num_experts)->default_value(or_default(c.num_experts, 8)),
       "number of experts E (a multiple of the rank count)")
      ("d-model", po::value(&c.d_model)->default_value(or_default(c.d_model, 512)), "model dimension d")
      ("d-hidden", po::value(&c.d_hidden)->default_value(or_default(c.d_hidden, 1024)),
       "expert hidden dimension h")
      ("top-k", po::value(&c.top_k)->default_value(c.top_k), "experts per token k (1..E)")
      ("capacity-factor", po::value(&c.capacity_factor)->default_value(c.capacity_factor, "1.25"),
       "per-expert capacity factor; <= 0 is dropless")
      ("min-capacity", po::value(&c.min_capacity)->default_value(c.min_capacity), "least capacity of an expert")
      ("drop-policy", po::value(&out.drop_policy)->default_value(out.drop_policy), "position | score")
      ("activation", po::value(&out.activation)->default_value(out.activation),
       "gelu | gelu_tanh | relu | silu | swiglu")
      ("normalize-topk", po::bool_switch(&c.normalize_topk), "renormalise the k selected weights to sum to 1")
      ("aux-loss-coef", po::value(&c.aux_loss_coef)->default_value(c.aux_loss_coef, "0.01"),
       "load-balancing loss coefficient")
      ("z-loss-coef", po::value(&c.z_loss_coef)->default_value(c.z_loss_coef, "0"), "router z-loss coefficient");
}

void finish_layer_options(LayerOptions& out) {
  const auto policy = parse_drop_policy(out.drop_policy);
  if (!policy) throw UsageError("--drop-policy '" + out.drop_policy + "' is not one of: position, score");
  out.config.drop_policy = *policy;
  const auto activation = experts::parse_activation(out.activation);
  if (!activation) {
    throw UsageError("--activation '" + out.activation +
                     "' is not one of: gelu, gelu_tanh, relu, silu, swiglu");
  }
  out.config.activation = *activation;
}

}  // namespace moe::apps
