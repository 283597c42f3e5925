// The float64 reference of SPEC.md, sections 3-8, applied rank by rank in one process.
#include "tests/reference/moe_reference.hpp"

#include "tests/reference/reference_internal.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numbers>
#include <numeric>
#include <utility>
#include <stdexcept>

namespace moe::ref {
namespace {

using std::int64_t;
using std::size_t;

size_t idx(int64_t i) { return static_cast<size_t>(i); }

void require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument("moe::ref: " + what);
}

bool is_swiglu(const LayerConfig& c) { return c.activation == "swiglu"; }

void validate(const LayerCase& c) {
  const LayerConfig& cf = c.config;
  const int64_t e = cf.num_experts, d = cf.d_model, h = cf.d_hidden;
  require(e >= 1 && d >= 1 && h >= 1, "num_experts, d_model and d_hidden must be >= 1");
  require(cf.top_k >= 1 && cf.top_k <= e, "top_k must be in [1, num_experts] (SPEC 1)");
  require(cf.min_capacity >= 0, "min_capacity must be >= 0");
  require(cf.drop_policy == "position" || cf.drop_policy == "score",
          "drop_policy must be position or score (SPEC 4)");
  require(cf.activation == "gelu" || cf.activation == "gelu_tanh" || cf.activation == "relu" ||
              cf.activation == "silu" || cf.activation == "swiglu",
          "unknown activation '" + cf.activation + "' (SPEC 5)");
  require(!c.tokens_per_rank.empty(), "tokens_per_rank needs one entry per rank");
  int64_t t = 0;
  for (int64_t tr : c.tokens_per_rank) {
    require(tr >= 0, "tokens_per_rank entries must be >= 0");
    t += tr;
  }
  require(c.input.size() == idx(t * d), "input must be [T, d]");
  require(c.grad_output.empty() || c.grad_output.size() == idx(t * d),
          "grad_output must be [T, d] or empty");
  require(c.params.gate.size() == idx(e * d), "gate must be [E, d]");
  require(c.params.experts.size() == idx(e), "need one ExpertParams per expert");
  const bool swiglu = is_swiglu(cf);
  for (const ExpertParams& p : c.params.experts) {
    require(p.w1.size() == idx(h * d) && p.w2.size() == idx(d * h), "w1 [h, d], w2 [d, h]");
    require(p.b1.size() == (swiglu ? 0 : idx(h)) && p.b2.size() == (swiglu ? 0 : idx(d)),
            "b1 [h] and b2 [d], absent for swiglu (SPEC 2)");
    require(p.w3.size() == (swiglu ? idx(h * d) : 0), "w3 [h, d] only for swiglu (SPEC 2)");
  }
}

// SPEC §5 activations with their derivatives.
struct ActValue {
  double value, derivative;
};

ActValue activate(const std::string& act, double x) {
  if (act == "relu") {
    return {x > 0 ? x : 0.0, x > 0 ? 1.0 : 0.0};  // relu'(0) = 0
  }
  if (act == "silu" || act == "swiglu") {
    const double s = 1.0 / (1.0 + std::exp(-x));
    return {x * s, s * (1.0 + x * (1.0 - s))};
  }
  if (act == "gelu_tanh") {
    constexpr double c = std::numbers::sqrt2 * std::numbers::inv_sqrtpi;  // sqrt(2/pi)
    constexpr double a = 0.044715;
    const double th = std::tanh(c * (x + a * x * x * x));
    return {0.5 * x * (1.0 + th),
            0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * c * (1.0 + 3.0 * a * x * x)};
  }
  // gelu, erf form: 0.5 x (1 + erf(x/sqrt2)), written with erfc so that it stays accurate for
  // negative x.
  constexpr double inv_sqrt2 = 1.0 / std::numbers::sqrt2;
  constexpr double inv_sqrt2pi = std::numbers::inv_sqrtpi * inv_sqrt2;
  const double cdf = 0.5 * std::erfc(-x * inv_sqrt2);
  return {x * cdf, cdf + x * inv_sqrt2pi * std::exp(-0.5 * x * x)};
}

ExpertParams zeros_like(const ExpertParams& p) {
  return {std::vector<double>(p.w1.size()), std::vector<double>(p.b1.size()),
          std::vector<double>(p.w2.size()), std::vector<double>(p.b2.size()),
          std::vector<double>(p.w3.size())};
}

// One expert on one token row (SPEC §5): y = f_e(x). When gy is given, also the backward of
// gy·f_e(x): accumulates into dx and dp.
void expert_apply(const LayerConfig& cf, const ExpertParams& p, const double* x, double* y,
                  const double* gy, double* dx, ExpertParams* dp) {
  const size_t d = idx(cf.d_model), h = idx(cf.d_hidden);
  const bool swiglu = is_swiglu(cf);
  std::vector<double> a1(h), a3(swiglu ? h : 0), g(h), gact(h);
  for (size_t i = 0; i < h; ++i) {
    double s1 = swiglu ? 0.0 : p.b1[i], s3 = 0.0;
    for (size_t l = 0; l < d; ++l) {
      s1 += p.w1[i * d + l] * x[l];
      if (swiglu) s3 += p.w3[i * d + l] * x[l];
    }
    a1[i] = s1;
    const ActValue av = activate(cf.activation, s1);
    if (swiglu) {
      a3[i] = s3;
      g[i] = av.value * s3;  // silu(x w1ᵀ) ⊙ (x w3ᵀ)
    } else {
      g[i] = av.value;
    }
    gact[i] = av.derivative;
  }
  for (size_t o = 0; o < d; ++o) {
    double s = swiglu ? 0.0 : p.b2[o];
    for (size_t i = 0; i < h; ++i) s += p.w2[o * h + i] * g[i];
    y[o] = s;
  }
  if (gy == nullptr) return;

  std::vector<double> gg(h, 0.0);
  for (size_t o = 0; o < d; ++o) {
    if (!swiglu) dp->b2[o] += gy[o];
    for (size_t i = 0; i < h; ++i) {
      dp->w2[o * h + i] += gy[o] * g[i];
      gg[i] += p.w2[o * h + i] * gy[o];
    }
  }
  for (size_t i = 0; i < h; ++i) {
    const double ga1 = swiglu ? gg[i] * a3[i] * gact[i] : gg[i] * gact[i];
    const double ga3 = swiglu ? gg[i] * activate("silu", a1[i]).value : 0.0;
    if (!swiglu) dp->b1[i] += ga1;
    for (size_t l = 0; l < d; ++l) {
      dp->w1[i * d + l] += ga1 * x[l];
      dx[l] += p.w1[i * d + l] * ga1;
      if (swiglu) {
        dp->w3[i * d + l] += ga3 * x[l];
        dx[l] += p.w3[i * d + l] * ga3;
      }
    }
  }
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

namespace detail {

Routing route(const LayerCase& c) {
  validate(c);
  const LayerConfig& cf = c.config;
  const int64_t e_count = cf.num_experts, d = cf.d_model, k = cf.top_k;
  const int64_t t_count = static_cast<int64_t>(c.input.size()) / d;
  const size_t ne = idx(e_count), nk = idx(k);

  Routing r;
  r.probs.resize(idx(t_count) * ne);
  r.lse.resize(idx(t_count));
  r.choices.resize(idx(t_count) * nk);
  r.weights.resize(idx(t_count) * nk);
  r.kept.assign(idx(t_count) * nk, false);
  r.counts.assign(ne, 0);
  r.kept_counts.assign(ne, 0);
  r.min_margin = std::numeric_limits<double>::infinity();
  r.token_margin.assign(idx(t_count), std::numeric_limits<double>::infinity());

  // SPEC §3: logits, softmax, top-k (ties to the smaller expert index), normalize_topk.
  std::vector<int64_t> order(ne);
  for (size_t t = 0; t < idx(t_count); ++t) {
    const double* x = &c.input[t * idx(d)];
    double* p = &r.probs[t * ne];
    for (size_t e = 0; e < ne; ++e) {
      double z = 0;
      for (size_t l = 0; l < idx(d); ++l) z += x[l] * c.params.gate[e * idx(d) + l];
      p[e] = z;
    }
    const double zmax = *std::max_element(p, p + ne);
    double sum = 0;
    for (size_t e = 0; e < ne; ++e) sum += (p[e] = std::exp(p[e] - zmax));
    for (size_t e = 0; e < ne; ++e) p[e] /= sum;
    r.lse[t] = zmax + std::log(sum);

    std::iota(order.begin(), order.end(), int64_t{0});
    const auto before = [p](int64_t a, int64_t b) {
      return p[a] > p[b] || (p[a] == p[b] && a < b);
    };
    const size_t ranked = std::min(nk + 1, ne);  // the (k+1)-th decides the margin
    std::partial_sort(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(ranked),
                      order.end(), before);
    if (nk < ne) r.token_margin[t] = p[order[nk - 1]] - p[order[nk]];
    r.min_margin = std::min(r.min_margin, r.token_margin[t]);

    double sel_sum = 0;
    for (size_t j = 0; j < nk; ++j) sel_sum += p[order[j]];
    for (size_t j = 0; j < nk; ++j) {
      const int64_t e = order[j];
      r.choices[t * nk + j] = e;
      ++r.counts[idx(e)];
      // With k = 1 the normalized weight is exactly 1 (SPEC 8), not p / p.
      r.weights[t * nk + j] = !cf.normalize_topk ? p[e] : (k == 1 ? 1.0 : p[e] / sel_sum);
    }
  }

  // SPEC §4: each source rank decides capacity and drops for its own tokens.
  const bool by_score = cf.drop_policy == "score";
  int64_t offset = 0;
  for (int64_t tr : c.tokens_per_rank) {
    const std::optional<int64_t> cap = capacity(cf, tr);
    // Assignment a = t*k + j of this rank's tokens, in the policy's ranking order.
    std::vector<int64_t> assignments(idx(tr * k));
    std::iota(assignments.begin(), assignments.end(), offset * k);
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
        // With normalize_topk and k = 1 every key is exactly 1: the ties are exact and the
        // SPEC's tie rule decides them, so there is no rounding-sensitive margin.
        if (!(cf.normalize_topk && k == 1)) {
          const double gap = last_kept[e] - w;
          r.min_margin = std::min(r.min_margin, gap);
          const size_t t = idx(a / k);
          r.token_margin[t] = std::min(r.token_margin[t], gap);
        }
      }
    }
    for (size_t e = 0; e < ne; ++e) r.kept_counts[e] += used[e];
    offset += tr;
  }
  return r;
}

}  // namespace detail

LayerResult run_reference(const LayerCase& c) {
  const detail::Routing rt = detail::route(c);
  const LayerConfig& cf = c.config;
  const int64_t e_count = cf.num_experts, d = cf.d_model, k = cf.top_k;
  const size_t ne = idx(e_count), nd = idx(d), nk = idx(k);
  const size_t t_count = c.input.size() / nd;
  // An empty grad_output means forward only, except when T = 0: then it is the [0, d] tensor and
  // the (zero) gradients are well defined.
  const bool with_grads = !c.grad_output.empty() || t_count == 0;

  LayerResult res;
  res.output.assign(t_count * nd, 0.0);
  res.expert_counts = rt.counts;
  res.expert_kept = rt.kept_counts;
  res.choices = rt.choices;
  res.weights = rt.weights;
  res.kept = rt.kept;
  res.min_margin = rt.min_margin;
  for (size_t t = 0; t < t_count; ++t) {
    bool any_kept = false;
    for (size_t j = 0; j < nk; ++j) {
      if (rt.kept[t * nk + j]) {
        any_kept = true;
      } else {
        ++res.dropped_assignments;
      }
    }
    if (!any_kept) ++res.dropped_tokens;
  }

  // SPEC §7, over all T tokens of the group; both 0 when T = 0.
  const double t_double = static_cast<double>(t_count);
  std::vector<double> f(ne, 0.0), mean_p(ne, 0.0);
  if (t_count > 0) {
    for (size_t e = 0; e < ne; ++e) {
      f[e] = static_cast<double>(rt.counts[e]) / (t_double * static_cast<double>(k));
      for (size_t t = 0; t < t_count; ++t) mean_p[e] += rt.probs[t * ne + e];
      mean_p[e] /= t_double;
      res.aux_loss += f[e] * mean_p[e];
    }
    res.aux_loss *= cf.aux_loss_coef * static_cast<double>(e_count);
    double zsum = 0;
    for (double l : rt.lse) zsum += l * l;
    res.z_loss = cf.z_loss_coef * zsum / t_double;
  }

  LayerGrads grads;
  if (with_grads) {
    grads.input.assign(t_count * nd, 0.0);
    grads.params.gate.assign(ne * nd, 0.0);
    for (const ExpertParams& p : c.params.experts) grads.params.experts.push_back(zeros_like(p));
  }

  // SPEC §5-§6: y_t = Σ_{kept j} w_{t,j} f_e(x_t); backward of the expert path alongside,
  // which also yields dL/dw_{t,j} = dy_t · f_e(x_t) for the router.
  std::vector<double> gw(t_count * nk, 0.0);
  std::vector<double> fx(nd), gy(nd);
  for (size_t t = 0; t < t_count; ++t) {
    const double* x = &c.input[t * nd];
    for (size_t j = 0; j < nk; ++j) {
      if (!rt.kept[t * nk + j]) continue;  // a dropped assignment contributes nothing
      const size_t e = idx(rt.choices[t * nk + j]);
      const double w = rt.weights[t * nk + j];
      if (with_grads) {
        const double* dy = &c.grad_output[t * nd];
        for (size_t o = 0; o < nd; ++o) gy[o] = w * dy[o];
        expert_apply(cf, c.params.experts[e], x, fx.data(), gy.data(), &grads.input[t * nd],
                     &grads.params.experts[e]);
        double dot = 0;
        for (size_t o = 0; o < nd; ++o) dot += dy[o] * fx[o];
        gw[t * nk + j] = dot;
      } else {
        expert_apply(cf, c.params.experts[e], x, fx.data(), nullptr, nullptr, nullptr);
      }
      for (size_t o = 0; o < nd; ++o) res.output[t * nd + o] += w * fx[o];
    }
  }

  if (with_grads) {
    // SPEC §8, router path. No gradient through the top-k selection or f_e.
    std::vector<double> gp(ne), gz(ne);
    for (size_t t = 0; t < t_count; ++t) {
      const double* p = &rt.probs[t * ne];
      std::fill(gp.begin(), gp.end(), 0.0);
      if (!cf.normalize_topk) {
        for (size_t j = 0; j < nk; ++j) gp[idx(rt.choices[t * nk + j])] += gw[t * nk + j];
      } else if (k > 1) {
        // w_j = p_j / s, s = Σ_i p_i over all k choices (kept or not, since normalization
        // precedes dropping): dL/dp_i = (gw_i - Σ_j gw_j w_j) / s.
        double s = 0, dot = 0;
        for (size_t j = 0; j < nk; ++j) {
          s += p[idx(rt.choices[t * nk + j])];
          dot += gw[t * nk + j] * rt.weights[t * nk + j];
        }
        for (size_t j = 0; j < nk; ++j) {
          gp[idx(rt.choices[t * nk + j])] += (gw[t * nk + j] - dot) / s;
        }
      }  // normalize_topk with k = 1: the weight is the constant 1, gradient exactly zero.
      // Load-balancing loss: d/dp_{t,e} of coef * E * Σ_e f_e P_e.
      for (size_t e = 0; e < ne; ++e) {
        gp[e] += cf.aux_loss_coef * static_cast<double>(e_count) * f[e] / t_double;
      }
      // Softmax backward, plus the z-loss: d/dz_e (lse²) = 2 lse p_e.
      double pg = 0;
      for (size_t e = 0; e < ne; ++e) pg += p[e] * gp[e];
      const double zscale = cf.z_loss_coef * 2.0 * rt.lse[t] / t_double;
      for (size_t e = 0; e < ne; ++e) gz[e] = p[e] * (gp[e] - pg) + zscale * p[e];
      // z = x gateᵀ.
      const double* x = &c.input[t * nd];
      for (size_t e = 0; e < ne; ++e) {
        for (size_t l = 0; l < nd; ++l) {
          grads.input[t * nd + l] += gz[e] * c.params.gate[e * nd + l];
          grads.params.gate[e * nd + l] += gz[e] * x[l];
        }
      }
    }
    res.grads = std::move(grads);
  }
  return res;
}

std::vector<bool> reference_kept(const LayerCase& c) { return detail::route(c).kept; }

double total_loss(const LayerCase& c, const LayerResult& r) {
  double l = r.aux_loss + r.z_loss;
  for (size_t i = 0; i < c.grad_output.size(); ++i) l += r.output[i] * c.grad_output[i];
  return l;
}

}  // namespace moe::ref
