#include "runtime/config_fields.hpp"

#include <cmath>
#include <string>
#include <vector>

#include "runtime/error.hpp"

namespace moe {
namespace {

using Rule = std::function<std::string(const MoeConfig&)>;
std::string no_rule(const MoeConfig&) { return {}; }

// Text forms of the field types. An enum is given by its parse and name functions and the list of
// its names for the message.
template <class T>
struct EnumText {
  std::optional<T> (*parse)(std::string_view);
  std::string_view (*name)(T);
  const char* choices;
};

std::string text_of(std::int64_t v) { return std::to_string(v); }
std::string text_of(double v) { return format_double(v); }
std::string text_of(bool v) { return v ? "true" : "false"; }

template <class T>
ConfigField number(std::string_view name, FieldKind kind, T MoeConfig::*member, Rule rule,
                   std::string_view help) {
  return {name, kind, help, [member](const MoeConfig& c) { return text_of(c.*member); },
          [member, name](MoeConfig& c, std::string_view text) {
            if constexpr (std::is_same_v<T, std::int64_t>) c.*member = parse_int64(name, text);
            else if constexpr (std::is_same_v<T, double>) c.*member = parse_double(name, text);
            else c.*member = parse_bool(name, text);
          },
          std::move(rule)};
}

template <class T>
ConfigField choice(std::string_view name, FieldKind kind, T MoeConfig::*member, EnumText<T> names,
                   Rule rule, std::string_view help) {
  return {name, kind, help, [member, names](const MoeConfig& c) { return std::string(names.name(c.*member)); },
          [member, names, name](MoeConfig& c, std::string_view text) {
            const auto value = names.parse(text);
            if (!value) {
              throw Error(std::string(name) + " '" + std::string(text) + "' is not one of: " + names.choices);
            }
            c.*member = *value;
          },
          std::move(rule)};
}

// Rules, worded to follow "<name>=<value> ".
Rule at_least(std::int64_t MoeConfig::*member, std::int64_t least) {
  return [member, least](const MoeConfig& c) {
    return c.*member >= least ? std::string() : "must be at least " + std::to_string(least);
  };
}
Rule finite_at_least_zero(double MoeConfig::*member) {
  return [member](const MoeConfig& c) {
    return std::isfinite(c.*member) && c.*member >= 0 ? std::string() : "must be finite and >= 0";
  };
}

std::string top_k_rule(const MoeConfig& c) {
  if (c.top_k < 1 || c.top_k > c.num_experts) {
    return "is outside 1..num_experts (" + std::to_string(c.num_experts) + ")";
  }
  // Only the experts of the chosen groups can be selected (SPEC.md section 3).
  if (c.n_group >= 1 && c.num_experts % c.n_group == 0) {
    const std::int64_t selectable = c.groups_per_token() * (c.num_experts / c.n_group);
    if (c.top_k > selectable) {
      return "is more than the " + std::to_string(selectable) + " experts of the topk_group=" +
             std::to_string(c.groups_per_token()) + " groups a token may use (n_group=" +
             std::to_string(c.n_group) + ", num_experts=" + std::to_string(c.num_experts) + ")";
    }
  }
  return {};
}

std::string n_group_rule(const MoeConfig& c) {
  if (c.n_group < 1) return "must be at least 1";
  if (c.num_experts % c.n_group != 0) {
    return "does not divide num_experts (" + std::to_string(c.num_experts) + ")";
  }
  return {};
}

std::string topk_group_rule(const MoeConfig& c) {
  // 0 stands for the default, every group; an explicit value is 1..n_group.
  if (c.topk_group < 0 || c.topk_group > c.n_group) {
    return "is outside 1..n_group (" + std::to_string(c.n_group) + ")";
  }
  return {};
}

std::string exchange_rule(const MoeConfig& c) {
  // Padded blocks hold `capacity` slots; a dropless layer has no capacity to size them.
  if (c.exchange == ExchangeKind::padded && c.dropless()) {
    return "needs a capacity, but capacity_factor=" + format_double(c.capacity_factor) +
           " makes the layer dropless; use the variable exchange";
  }
  // The relays of the two-level exchange sum expert outputs of a whole pass per (token, node),
  // so it does not split the pass into chunks, and it sums in fp32, which a bf16 wire would
  // round once more on each level.
  if (c.exchange == ExchangeKind::hierarchical && c.overlap_chunks != 1) {
    return "runs the whole pass as one chunk: set overlap_chunks=1 (it is " +
           (c.overlap_chunks == 0 ? std::string("auto") : std::to_string(c.overlap_chunks)) + ")";
  }
  if (c.exchange == ExchangeKind::hierarchical && c.wire_format() != WireFormat::fp32) {
    return std::string("sends fp32 rows (its relays add partial sums): set wire=fp32") +
           (c.wire ? "" : " (wire=auto follows compute=bf16)");
  }
  return {};
}

ConfigField with_option(std::string_view option, ConfigField field) {
  field.option = option;
  return field;
}

const std::vector<ConfigField>& table() {
  using K = FieldKind;
  using M = MoeConfig;
  static const std::vector<ConfigField> fields = {
      with_option("experts", number("num_experts", K::shape, &M::num_experts, at_least(&M::num_experts, 1),
                                    "number of experts E (any count on any number of ranks)")),
      number("d_model", K::shape, &M::d_model, at_least(&M::d_model, 1), "model dimension d"),
      number("d_hidden", K::shape, &M::d_hidden, at_least(&M::d_hidden, 1), "expert hidden dimension h"),
      number("d_shared_hidden", K::shape, &M::d_shared_hidden, at_least(&M::d_shared_hidden, 0),
             "hidden dimension of the shared expert applied to every token; 0: none"),
      number("top_k", K::layer, &M::top_k, top_k_rule, "experts per token k"),
      number("capacity_factor", K::layer, &M::capacity_factor,
             [](const M& c) { return std::isfinite(c.capacity_factor) ? std::string() : "must be finite"; },
             "per-expert capacity max(min_capacity, ceil(cf*T*k/E)); <= 0: dropless"),
      number("min_capacity", K::layer, &M::min_capacity, at_least(&M::min_capacity, 0),
             "least capacity of an expert"),
      choice("drop_policy", K::layer, &M::drop_policy, {parse_drop_policy, to_string, "position, score"},
             no_rule, "which assignments an expert keeps: position (choice, then token) | score"),
      choice("capacity_scope", K::layer, &M::capacity_scope,
             {parse_capacity_scope, to_string, "rank, global"}, no_rule,
             "capacity decided per source rank, or over the whole group (results independent of P)"),
      choice("activation", K::layer, &M::activation,
             {experts::parse_activation, experts::to_string, "gelu, gelu_tanh, relu, silu, swiglu"},
             no_rule, "expert activation: gelu | gelu_tanh | relu | silu | swiglu"),
      choice("gate", K::layer, &M::gate, {parse_gate_kind, to_string, "softmax, sigmoid"}, no_rule,
             "router scores: softmax | sigmoid (with a selection bias)"),
      number("n_group", K::layer, &M::n_group, n_group_rule,
             "expert groups for group-limited routing (divides E)"),
      number("topk_group", K::layer, &M::topk_group, topk_group_rule,
             "groups a token may use, 1..n_group; 0: all"),
      number("normalize_topk", K::layer, &M::normalize_topk, no_rule,
             "renormalise the k selected weights to sum to 1"),
      number("routed_scaling_factor", K::layer, &M::routed_scaling_factor,
             [](const M& c) {
               return std::isfinite(c.routed_scaling_factor) && c.routed_scaling_factor > 0
                          ? std::string() : "must be finite and > 0";
             },
             "factor on the routed weights, after normalize_topk"),
      number("aux_loss_coef", K::layer, &M::aux_loss_coef, finite_at_least_zero(&M::aux_loss_coef),
             "load-balancing loss coefficient"),
      number("z_loss_coef", K::layer, &M::z_loss_coef, finite_at_least_zero(&M::z_loss_coef),
             "router z-loss coefficient"),
      number("bias_update_rate", K::layer, &M::bias_update_rate,
             [](const M& c) {
               if (!std::isfinite(c.bias_update_rate) || c.bias_update_rate < 0) return std::string("must be finite and >= 0");
               if (c.bias_update_rate > 0 && c.gate != GateKind::sigmoid) {
                 return std::string("needs gate=sigmoid (the selection bias exists only there)");
               }
               return std::string();
             },
             "step of the selection-bias update after each forward (sigmoid gate)"),
      ConfigField{"overlap_chunks", K::execution,
                  "chunks of the exchange/compute pipeline (1..64), or auto",
                  [](const M& c) { return c.overlap_chunks == 0 ? std::string("auto") : std::to_string(c.overlap_chunks); },
                  [](M& c, std::string_view text) {
                    c.overlap_chunks = text == "auto" ? 0 : parse_int64("overlap_chunks", text);
                  },
                  [](const M& c) {
                    return c.overlap_chunks >= 0 && c.overlap_chunks <= kMaxOverlapChunks
                               ? std::string() : "is outside 1..64 (or auto)";
                  }},
      choice("exchange", K::execution, &M::exchange,
             {parse_exchange_kind, to_string, "variable, padded, hierarchical"}, exchange_rule,
             "variable (counts, then rows) | padded (capacity slots, no count exchange) | "
             "hierarchical (a token crosses once per destination node, fanned out inside it)"),
      number("ranks_per_node", K::execution, &M::ranks_per_node, at_least(&M::ranks_per_node, 0),
             "ranks per node (consecutive blocks) for the hierarchical exchange and inter-node "
             "statistics; 0: the hosts as MPI sees them"),
      choice("compute", K::execution, &M::compute,
             {experts::parse_compute, experts::to_string, "fp32, bf16"}, no_rule,
             "precision of the expert GEMMs: fp32 | bf16 (fp32 accumulation and master weights; "
             "relative error <= 1e-2)"),
      ConfigField{"wire", K::execution,
                  "format of exchanged rows: fp32 | bf16 (relative error <= 1e-2) | auto (that of compute)",
                  [](const M& c) { return c.wire ? std::string(to_string(*c.wire)) : std::string("auto"); },
                  [](M& c, std::string_view text) {
                    if (text == "auto") {
                      c.wire.reset();
                      return;
                    }
                    const auto format = parse_wire_format(text);
                    if (!format) throw Error("wire '" + std::string(text) + "' is not one of: fp32, bf16, auto");
                    c.wire = *format;
                  },
                  no_rule},
      number("check_finite", K::execution, &M::check_finite, no_rule,
             "refuse NaN or infinite inputs and output gradients"),
  };
  return fields;
}

}  // namespace

std::span<const ConfigField> config_fields() { return table(); }

const ConfigField* find_config_field(std::string_view name) {
  for (const ConfigField& f : table()) {
    if (f.name == name) return &f;
  }
  return nullptr;
}

}  // namespace moe
