#include "runtime/config.hpp"

#include <charconv>
#include <cmath>
#include <sstream>

#include "runtime/error.hpp"

namespace moe {

std::optional<DropPolicy> parse_drop_policy(std::string_view name) {
  if (name == "position") return DropPolicy::position;
  if (name == "score") return DropPolicy::score;
  return std::nullopt;
}

std::string_view to_string(DropPolicy policy) {
  return policy == DropPolicy::position ? "position" : "score";
}

std::optional<ExchangeKind> parse_exchange_kind(std::string_view name) {
  if (name == "variable") return ExchangeKind::variable;
  if (name == "padded") return ExchangeKind::padded;
  return std::nullopt;
}

std::string_view to_string(ExchangeKind kind) {
  return kind == ExchangeKind::variable ? "variable" : "padded";
}

namespace {

[[noreturn]] void fail(std::string message) { throw Error(std::move(message)); }

std::string format_double(double value) {
  std::ostringstream out;
  out.precision(17);
  out << value;
  return out.str();
}

}  // namespace

void MoeConfig::validate(int ep_size) const {
  if (ep_size < 1) fail("expert-parallel size must be at least 1, got " + std::to_string(ep_size));
  if (num_experts < 1) fail("num_experts must be at least 1, got " + std::to_string(num_experts));
  if (d_model < 1) fail("d_model must be at least 1, got " + std::to_string(d_model));
  if (d_hidden < 1) fail("d_hidden must be at least 1, got " + std::to_string(d_hidden));
  // Each rank owns a contiguous block of E/P experts (SPEC.md section 1).
  if (num_experts % ep_size != 0) {
    fail("num_experts=" + std::to_string(num_experts) +
         " is not divisible by the expert-parallel size " + std::to_string(ep_size));
  }
  if (top_k < 1 || top_k > num_experts) {
    fail("top_k=" + std::to_string(top_k) + " is outside 1..num_experts (" +
         std::to_string(num_experts) + ")");
  }
  if (!std::isfinite(capacity_factor)) {
    fail("capacity_factor must be finite, got " + format_double(capacity_factor));
  }
  if (min_capacity < 0) fail("min_capacity must be >= 0, got " + std::to_string(min_capacity));
  if (!std::isfinite(aux_loss_coef) || aux_loss_coef < 0) {
    fail("aux_loss_coef must be finite and >= 0, got " + format_double(aux_loss_coef));
  }
  if (!std::isfinite(z_loss_coef) || z_loss_coef < 0) {
    fail("z_loss_coef must be finite and >= 0, got " + format_double(z_loss_coef));
  }
  if (overlap_chunks < 0 || overlap_chunks > kMaxOverlapChunks) {
    fail("overlap_chunks=" + std::to_string(overlap_chunks) + " is outside 0..64 (0 = auto)");
  }
  // Padded blocks hold `capacity` slots; a dropless layer has no capacity to size them by.
  if (exchange == ExchangeKind::padded && dropless()) {
    fail("the padded exchange needs a capacity, but capacity_factor=" +
         format_double(capacity_factor) + " makes the layer dropless; use the variable exchange");
  }
}

std::map<std::string, std::string> MoeConfig::options_to_metadata() const {
  return {
      {"top_k", std::to_string(top_k)},
      {"capacity_factor", format_double(capacity_factor)},
      {"min_capacity", std::to_string(min_capacity)},
      {"drop_policy", std::string(to_string(drop_policy))},
      {"activation", std::string(experts::to_string(activation))},
      {"normalize_topk", normalize_topk ? "true" : "false"},
      {"aux_loss_coef", format_double(aux_loss_coef)},
      {"z_loss_coef", format_double(z_loss_coef)},
  };
}

void MoeConfig::options_from_metadata(const std::map<std::string, std::string>& metadata) {
  auto value_of = [&](const char* key) -> const std::string* {
    auto it = metadata.find(key);
    return it == metadata.end() ? nullptr : &it->second;
  };
  if (auto v = value_of("top_k")) top_k = parse_int64("top_k", *v);
  if (auto v = value_of("capacity_factor")) capacity_factor = parse_double("capacity_factor", *v);
  if (auto v = value_of("min_capacity")) min_capacity = parse_int64("min_capacity", *v);
  if (auto v = value_of("drop_policy")) {
    auto policy = parse_drop_policy(*v);
    if (!policy) fail("drop_policy '" + *v + "' is not one of: position, score");
    drop_policy = *policy;
  }
  if (auto v = value_of("activation")) {
    auto act = experts::parse_activation(*v);
    if (!act) fail("activation '" + *v + "' is not one of: gelu, gelu_tanh, relu, silu, swiglu");
    activation = *act;
  }
  if (auto v = value_of("normalize_topk")) normalize_topk = parse_bool("normalize_topk", *v);
  if (auto v = value_of("aux_loss_coef")) aux_loss_coef = parse_double("aux_loss_coef", *v);
  if (auto v = value_of("z_loss_coef")) z_loss_coef = parse_double("z_loss_coef", *v);
}

std::vector<std::pair<std::string, std::string>> MoeConfig::fields() const {
  auto fields = std::vector<std::pair<std::string, std::string>>{
      {"num_experts", std::to_string(num_experts)},
      {"d_model", std::to_string(d_model)},
      {"d_hidden", std::to_string(d_hidden)},
  };
  for (auto& option : options_to_metadata()) fields.push_back(option);
  fields.push_back({"overlap_chunks", std::to_string(overlap_chunks)});
  fields.push_back({"exchange", std::string(to_string(exchange))});
  fields.push_back({"wire", std::string(to_string(wire))});
  fields.push_back({"check_finite", check_finite ? "true" : "false"});
  return fields;
}

std::string MoeConfig::summary() const {
  std::ostringstream out;
  out << "E=" << num_experts << " d=" << d_model << " h=" << d_hidden << " k=" << top_k
      << " capacity_factor=" << capacity_factor << (dropless() ? " (dropless)" : "")
      << " min_capacity=" << min_capacity << " drop_policy=" << to_string(drop_policy)
      << " activation=" << experts::to_string(activation)
      << " normalize_topk=" << (normalize_topk ? "true" : "false")
      << " aux_loss_coef=" << aux_loss_coef << " z_loss_coef=" << z_loss_coef
      << " overlap_chunks=" << (overlap_chunks == 0 ? std::string("auto") : std::to_string(overlap_chunks))
      << " exchange=" << to_string(exchange) << " wire=" << to_string(wire);
  return out.str();
}

std::int64_t parse_int64(std::string_view what, std::string_view text) {
  std::int64_t value = 0;
  const char* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, value);
  if (text.empty() || ec != std::errc() || ptr != end) {
    fail(std::string(what) + ": '" + std::string(text) + "' is not an integer");
  }
  return value;
}

double parse_double(std::string_view what, std::string_view text) {
  double value = 0;
  const char* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, value);
  if (text.empty() || ec != std::errc() || ptr != end || !std::isfinite(value)) {
    fail(std::string(what) + ": '" + std::string(text) + "' is not a finite number");
  }
  return value;
}

bool parse_bool(std::string_view what, std::string_view text) {
  if (text == "true") return true;
  if (text == "false") return false;
  fail(std::string(what) + ": '" + std::string(text) + "' is not true or false");
}

}  // namespace moe
