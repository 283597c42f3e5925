// The router and the capacity cut of SPEC.md (sections 3-4), the selection-bias update, and the
// validation of a case against SPEC §1-§5.
#include "tests/reference/moe_reference.hpp"

#include "tests/reference/reference_internal.hpp"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <numeric>
#include <stdexcept>
#include <utility>

namespace moe::ref {
namespace {

using std::int64_t;
using std::size_t;

constexpr double kInf = std::numeric_limits<double>::infinity();

size_t idx(int64_t i) { return static_cast<size_t>(i); }

void require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument("moe::ref: " + what);
}

// M of SPEC 3: topk_group = 0 stands for the default M = G.
int64_t selectable_groups(const LayerConfig& cf) {
  return cf.topk_group == 0 ? cf.n_group : cf.topk_group;
}

void validate_names(const LayerConfig& cf) {
  require(cf.drop_policy == "position" || cf.drop_policy == "score",
          "drop_policy must be position or score (SPEC 4)");
  require(cf.activation == "gelu" || cf.activation == "gelu_tanh" || cf.activation == "relu" ||
              cf.activation == "silu" || cf.activation == "swiglu",
          "unknown activation '" + cf.activation + "' (SPEC 5)");
  require(cf.gate == "softmax" || cf.gate == "sigmoid", "gate must be softmax or sigmoid (SPEC 3)");
  require(cf.capacity_scope == "rank" || cf.capacity_scope == "global",
          "capacity_scope must be rank or global (SPEC 4)");
}

void validate_routing(const LayerConfig& cf) {
  const int64_t e = cf.num_experts;
  require(cf.top_k >= 1 && cf.top_k <= e, "top_k must be in [1, num_experts] (SPEC 1)");
  require(cf.n_group >= 1 && e % cf.n_group == 0, "n_group must be >= 1 and divide num_experts");
  require(cf.topk_group >= 0 && cf.topk_group <= cf.n_group,
          "topk_group must be in [1, n_group] (0: n_group) (SPEC 3)");
  // Fewer selectable experts than k would leave choices unfilled.
  require(cf.top_k <= selectable_groups(cf) * (e / cf.n_group),
          "top_k must be <= topk_group * num_experts / n_group (SPEC 1)");
  require(std::isfinite(cf.routed_scaling_factor) && cf.routed_scaling_factor > 0,
          "routed_scaling_factor must be finite and > 0 (SPEC 3)");
  require(std::isfinite(cf.bias_update_rate) && cf.bias_update_rate >= 0,
          "bias_update_rate must be finite and >= 0 (SPEC 3)");
  require(cf.bias_update_rate == 0 || detail::is_sigmoid(cf),
          "bias_update_rate > 0 needs gate = sigmoid (SPEC 3)");
}

void validate_expert(const LayerConfig& cf, const ExpertParams& p, int64_t h,
                     const std::string& name) {
  const int64_t d = cf.d_model;
  const bool swiglu = detail::is_swiglu(cf);
  require(p.w1.size() == idx(h * d) && p.w2.size() == idx(d * h), name + ": w1 [h, d], w2 [d, h]");
  require(p.b1.size() == (swiglu ? 0 : idx(h)) && p.b2.size() == (swiglu ? 0 : idx(d)),
          name + ": b1 [h] and b2 [d], absent for swiglu (SPEC 2)");
  require(p.w3.size() == (swiglu ? idx(h * d) : 0), name + ": w3 [h, d] only for swiglu (SPEC 2)");
}

void validate_params(const LayerCase& c) {
  const LayerConfig& cf = c.config;
  const int64_t e = cf.num_experts, d = cf.d_model;
  require(c.params.gate.size() == idx(e * d), "gate must be [E, d]");
  require(c.params.experts.size() == idx(e), "need one ExpertParams per expert");
  for (const ExpertParams& p : c.params.experts) validate_expert(cf, p, cf.d_hidden, "expert");
  const std::vector<double>& b = c.params.score_bias;
  require(b.empty() || detail::is_sigmoid(cf),
          "a selection bias needs gate = sigmoid (SPEC 2, 11)");
  require(b.empty() || b.size() == idx(e), "score_bias must be [E] or empty");
  require(std::all_of(b.begin(), b.end(), [](double v) { return std::isfinite(v); }),
          "score_bias must be finite");
  require(cf.d_shared_hidden >= 0, "d_shared_hidden must be >= 0");
  require(c.params.shared_expert.has_value() == (cf.d_shared_hidden > 0),
          "shared_expert is present iff d_shared_hidden > 0");
  if (c.params.shared_expert) {
    validate_expert(cf, *c.params.shared_expert, cf.d_shared_hidden, "shared_expert");
  }
}

// SPEC 3: s = softmax(z) or sigmoid(z) elementwise. Also the logsumexp of z (SPEC 7) and the p
// of the load-balancing loss: the softmax itself, or the sigmoid scores normalized per token.
void score_row(const LayerConfig& cf, const double* z, size_t ne, double* s, double* p,
               double* lse) {
  const double zmax = *std::max_element(z, z + ne);
  double sum = 0;
  for (size_t e = 0; e < ne; ++e) sum += (p[e] = std::exp(z[e] - zmax));
  for (size_t e = 0; e < ne; ++e) p[e] /= sum;
  *lse = zmax + std::log(sum);
  if (!detail::is_sigmoid(cf)) {
    std::copy(p, p + ne, s);
    return;
  }
  double total = 0;
  for (size_t e = 0; e < ne; ++e) total += (s[e] = 1.0 / (1.0 + std::exp(-z[e])));
  for (size_t e = 0; e < ne; ++e) p[e] = s[e] / total;
}

// Sorts `items` so that the first `n` are the largest by key, ties to the smaller item: the order
// of SPEC 3 for experts and for groups. Returns the n-th minus the (n+1)-th key, the margin of
// that decision, or infinity when every item is taken.
double take_largest(std::vector<int64_t>& items, const std::vector<double>& key, size_t n) {
  const auto before = [&key](int64_t a, int64_t b) {
    return key[idx(a)] > key[idx(b)] || (key[idx(a)] == key[idx(b)] && a < b);
  };
  const size_t ranked = std::min(n + 1, items.size());  // the (n+1)-th decides the margin
  std::partial_sort(items.begin(), items.begin() + static_cast<std::ptrdiff_t>(ranked),
                    items.end(), before);
  if (n >= items.size()) return kInf;
  return key[idx(items[n - 1])] - key[idx(items[n])];
}

// A group's score (SPEC 3): the sum of its min(2, n) largest selection scores, the largest first.
double score_of_group(std::vector<double>::const_iterator first, int64_t n) {
  std::vector<double> members(first, first + n);
  const auto top = std::min<std::ptrdiff_t>(2, n);
  std::partial_sort(members.begin(), members.begin() + top, members.end(), std::greater<>());
  return std::accumulate(members.begin(), members.begin() + top, 0.0);
}

// SPEC 3, group-limited routing: the experts of the M groups with the largest group scores (the
// sum of a group's min(2, E/G) largest q), in ascending expert order. *margin gets the M-th minus
// the (M+1)-th group score (infinity when M = G: nothing is decided).
std::vector<int64_t> selectable_experts(const LayerConfig& cf, const std::vector<double>& q,
                                        double* margin) {
  const int64_t g_count = cf.n_group, m = selectable_groups(cf);
  const int64_t per_group = cf.num_experts / g_count;
  std::vector<int64_t> groups(idx(g_count));
  std::iota(groups.begin(), groups.end(), int64_t{0});
  *margin = kInf;
  if (m < g_count) {
    std::vector<double> group_score(idx(g_count));
    for (int64_t g = 0; g < g_count; ++g) {
      group_score[idx(g)] = score_of_group(q.begin() + g * per_group, per_group);
    }
    *margin = take_largest(groups, group_score, idx(m));
    groups.resize(idx(m));
    std::sort(groups.begin(), groups.end());
  }
  std::vector<int64_t> experts;
  for (int64_t g : groups) {
    for (int64_t e = g * per_group; e < (g + 1) * per_group; ++e) experts.push_back(e);
  }
  return experts;
}

// SPEC 3 for one token row: choices (the k largest q among the selectable experts) and their
// final weights. Returns the smallest margin of the row's decisions.
double route_row(const LayerConfig& cf, const std::vector<double>& bias, const double* s,
                 int64_t* choices, double* weights) {
  const size_t ne = idx(cf.num_experts), nk = idx(cf.top_k);
  std::vector<double> q(s, s + ne);  // softmax: q = s
  if (!bias.empty()) {
    for (size_t e = 0; e < ne; ++e) q[e] += bias[e];
  }
  double group_margin = kInf;
  std::vector<int64_t> candidates = selectable_experts(cf, q, &group_margin);
  const double topk_margin = take_largest(candidates, q, nk);

  double sel_sum = 0;
  for (size_t j = 0; j < nk; ++j) sel_sum += s[idx(candidates[j])];
  for (size_t j = 0; j < nk; ++j) {
    const int64_t e = candidates[j];
    choices[j] = e;
    // The unbiased score; with normalize_topk and k = 1 exactly 1 (SPEC 8), not s / s.
    const double w = !cf.normalize_topk ? s[idx(e)] : (nk == 1 ? 1.0 : s[idx(e)] / sel_sum);
    weights[j] = w * cf.routed_scaling_factor;
  }
  return std::min(group_margin, topk_margin);
}

// Token rows [first, first + count) that share one capacity decision (SPEC 4).
struct Segment {
  int64_t first, count;
};

std::vector<Segment> capacity_segments(const LayerCase& c, int64_t t_count) {
  if (c.config.capacity_scope == "global") return {{0, t_count}};
  std::vector<Segment> out;
  int64_t offset = 0;
  for (int64_t tr : c.tokens_per_rank) {
    out.push_back({offset, tr});
    offset += tr;
  }
  return out;
}

// SPEC 4 for one segment: every expert keeps its first `capacity` assignments in the policy's
// order. Updates kept, kept_counts and (score policy) the margins at the cuts.
void apply_capacity(const LayerConfig& cf, Segment seg, detail::Routing& r) {
  const int64_t k = cf.top_k;
  const size_t ne = idx(cf.num_experts);
  const std::optional<int64_t> cap = capacity(cf, seg.count);
  const bool by_score = cf.drop_policy == "score";
  // Assignment a = t*k + j of the segment's tokens (t global), in the policy's ranking order.
  std::vector<int64_t> assignments(idx(seg.count * k));
  std::iota(assignments.begin(), assignments.end(), seg.first * k);
  if (by_score) {
    // Weight descending; ties by smaller t, then smaller j, i.e. smaller a.
    std::sort(assignments.begin(), assignments.end(), [&](int64_t a, int64_t b) {
      const double wa = r.weights[idx(a)], wb = r.weights[idx(b)];
      return wa > wb || (wa == wb && a < b);
    });
  } else {
    // By choice j, then token t.
    std::sort(assignments.begin(), assignments.end(), [k](int64_t a, int64_t b) {
      return std::pair(a % k, a / k) < std::pair(b % k, b / k);
    });
  }
  std::vector<int64_t> used(ne, 0);
  std::vector<double> last_kept(ne, 0.0);
  std::vector<bool> cut_seen(ne, false);
  for (int64_t a : assignments) {
    const size_t e = idx(r.choices[idx(a)]);
    const double w = r.weights[idx(a)];
    if (!cap || used[e] < *cap) {
      ++used[e];
      r.kept[idx(a)] = true;
      last_kept[e] = w;
    } else if (by_score && !cut_seen[e] && used[e] > 0) {
      cut_seen[e] = true;
      // With normalize_topk and k = 1 every key is exactly routed_scaling_factor: the ties are
      // exact and the SPEC's tie rule decides them, so there is no rounding-sensitive margin.
      if (!(cf.normalize_topk && k == 1)) {
        const double gap = last_kept[e] - w;
        r.min_margin = std::min(r.min_margin, gap);
        const size_t t = idx(a / k);
        r.token_margin[t] = std::min(r.token_margin[t], gap);
      }
    }
  }
  for (size_t e = 0; e < ne; ++e) r.kept_counts[e] += used[e];
}

}  // namespace

std::optional<int64_t> capacity(const LayerConfig& config, int64_t tokens) {
  if (config.capacity_factor <= 0) return std::nullopt;  // dropless (SPEC 4)
  if (tokens == 0) return 0;
  // In double, left to right as SPEC 4 writes it: capacity_factor * T_r * k / E.
  const double raw = config.capacity_factor * static_cast<double>(tokens) *
                     static_cast<double>(config.top_k) / static_cast<double>(config.num_experts);
  return std::max(config.min_capacity, static_cast<int64_t>(std::ceil(raw)));
}

std::vector<double> updated_score_bias(const LayerConfig& config, const std::vector<double>& bias,
                                       const std::vector<int64_t>& counts) {
  if (!detail::is_sigmoid(config)) return {};
  const size_t ne = idx(config.num_experts);
  require(bias.empty() || bias.size() == ne, "score_bias must be [E] or empty");
  require(counts.size() == ne, "counts must be [E]");
  std::vector<double> b = bias.empty() ? std::vector<double>(ne, 0.0) : bias;
  if (config.bias_update_rate == 0) return b;
  const int64_t total = std::accumulate(counts.begin(), counts.end(), int64_t{0});
  for (size_t e = 0; e < ne; ++e) {
    // sign(c̄ − c_e) = sign(Σc − E·c_e): exact in integers, where c̄ in double could round a
    // tie (sign 0) into ±1.
    const int64_t diff = total - config.num_experts * counts[e];
    if (diff != 0) b[e] += config.bias_update_rate * (diff > 0 ? 1.0 : -1.0);
  }
  return b;
}

namespace detail {

void validate(const LayerCase& c) {
  const LayerConfig& cf = c.config;
  const int64_t d = cf.d_model;
  require(cf.num_experts >= 1 && d >= 1 && cf.d_hidden >= 1,
          "num_experts, d_model and d_hidden must be >= 1");
  require(cf.min_capacity >= 0, "min_capacity must be >= 0");
  validate_names(cf);
  validate_routing(cf);
  require(!c.tokens_per_rank.empty(), "tokens_per_rank needs one entry per rank");
  int64_t t = 0;
  for (int64_t tr : c.tokens_per_rank) {
    require(tr >= 0, "tokens_per_rank entries must be >= 0");
    t += tr;
  }
  require(c.input.size() == idx(t * d), "input must be [T, d]");
  require(c.grad_output.empty() || c.grad_output.size() == idx(t * d),
          "grad_output must be [T, d] or empty");
  validate_params(c);
}

Routing route(const LayerCase& c) {
  validate(c);
  const LayerConfig& cf = c.config;
  const int64_t d = cf.d_model;
  const size_t ne = idx(cf.num_experts), nd = idx(d), nk = idx(cf.top_k);
  const size_t t_count = c.input.size() / nd;

  Routing r;
  r.logits.resize(t_count * ne);
  r.scores.resize(t_count * ne);
  r.probs.resize(t_count * ne);
  r.lse.resize(t_count);
  r.choices.resize(t_count * nk);
  r.weights.resize(t_count * nk);
  r.kept.assign(t_count * nk, false);
  r.counts.assign(ne, 0);
  r.kept_counts.assign(ne, 0);
  r.min_margin = kInf;
  r.token_margin.assign(t_count, kInf);

  for (size_t t = 0; t < t_count; ++t) {
    const double* x = &c.input[t * nd];
    double* z = &r.logits[t * ne];
    for (size_t e = 0; e < ne; ++e) {
      double sum = 0;
      for (size_t l = 0; l < nd; ++l) sum += x[l] * c.params.gate[e * nd + l];
      z[e] = sum;
    }
    score_row(cf, z, ne, &r.scores[t * ne], &r.probs[t * ne], &r.lse[t]);
    r.token_margin[t] = route_row(cf, c.params.score_bias, &r.scores[t * ne],
                                  &r.choices[t * nk], &r.weights[t * nk]);
    r.min_margin = std::min(r.min_margin, r.token_margin[t]);
    for (size_t j = 0; j < nk; ++j) ++r.counts[idx(r.choices[t * nk + j])];
  }
  for (Segment seg : capacity_segments(c, static_cast<int64_t>(t_count))) {
    apply_capacity(cf, seg, r);
  }
  return r;
}

}  // namespace detail
}  // namespace moe::ref
