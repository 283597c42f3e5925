// The float64 reference of SPEC.md, sections 5-8: experts, output, auxiliary losses and the
// backward pass, on top of the routing of reference_router.cpp.
#include "tests/reference/moe_reference.hpp"

#include "tests/reference/reference_internal.hpp"

#include <algorithm>
#include <cmath>
#include <numbers>
#include <utility>

namespace moe::ref {
namespace {

using std::int64_t;
using std::size_t;

size_t idx(int64_t i) { return static_cast<size_t>(i); }

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

// One expert with hidden size `hidden` (d_hidden, or d_shared_hidden for the shared expert) on
// one token row (SPEC §5): y = f(x). When gy is given, also the backward of gy·f(x):
// accumulates into dx and dp.
void expert_apply(const LayerConfig& cf, int64_t hidden, const ExpertParams& p, const double* x,
                  double* y, const double* gy, double* dx, ExpertParams* dp) {
  const size_t d = idx(cf.d_model), h = idx(hidden);
  const bool swiglu = detail::is_swiglu(cf);
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

void count_drops(const detail::Routing& rt, size_t nk, LayerResult& res) {
  const size_t t_count = rt.kept.size() / nk;
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
}

// SPEC §7, over all T tokens of the group; both 0 when T = 0. Returns f_e, which the backward
// pass holds constant.
std::vector<double> aux_losses(const LayerConfig& cf, const detail::Routing& rt,
                               LayerResult& res) {
  const size_t ne = idx(cf.num_experts), t_count = rt.lse.size();
  const double t_double = static_cast<double>(t_count);
  std::vector<double> f(ne, 0.0), mean_p(ne, 0.0);
  if (t_count == 0) return f;
  for (size_t e = 0; e < ne; ++e) {
    f[e] = static_cast<double>(rt.counts[e]) / (t_double * static_cast<double>(cf.top_k));
    for (size_t t = 0; t < t_count; ++t) mean_p[e] += rt.probs[t * ne + e];
    mean_p[e] /= t_double;
    res.aux_loss += f[e] * mean_p[e];
  }
  res.aux_loss *= cf.aux_loss_coef * static_cast<double>(cf.num_experts);
  double zsum = 0;
  for (double l : rt.lse) zsum += l * l;
  res.z_loss = cf.z_loss_coef * zsum / t_double;
  return f;
}

LayerGrads zero_grads(const LayerCase& c) {
  LayerGrads g;
  g.input.assign(c.input.size(), 0.0);
  g.params.gate.assign(c.params.gate.size(), 0.0);
  for (const ExpertParams& p : c.params.experts) g.params.experts.push_back(zeros_like(p));
  if (c.params.shared_expert) g.params.shared_expert = zeros_like(*c.params.shared_expert);
  return g;  // score_bias stays empty: a buffer, no gradient (SPEC 8)
}

// SPEC §5-§6, routed experts: y_t += Σ_{kept j} w_{t,j} f_e(x_t); with grads, the backward of
// that path alongside. Returns dL/dw_{t,j} = dy_t · f_e(x_t) ([T, k]) for the router.
std::vector<double> routed_experts(const LayerCase& c, const detail::Routing& rt,
                                   LayerResult& res, LayerGrads* grads) {
  const LayerConfig& cf = c.config;
  const size_t nd = idx(cf.d_model), nk = idx(cf.top_k), t_count = rt.lse.size();
  std::vector<double> gw(t_count * nk, 0.0);
  std::vector<double> fx(nd), gy(nd);
  for (size_t t = 0; t < t_count; ++t) {
    const double* x = &c.input[t * nd];
    for (size_t j = 0; j < nk; ++j) {
      if (!rt.kept[t * nk + j]) continue;  // a dropped assignment contributes nothing
      const size_t e = idx(rt.choices[t * nk + j]);
      const double w = rt.weights[t * nk + j];
      const ExpertParams& p = c.params.experts[e];
      if (grads != nullptr) {
        const double* dy = &c.grad_output[t * nd];
        for (size_t o = 0; o < nd; ++o) gy[o] = w * dy[o];
        expert_apply(cf, cf.d_hidden, p, x, fx.data(), gy.data(), &grads->input[t * nd],
                     &grads->params.experts[e]);
        double dot = 0;
        for (size_t o = 0; o < nd; ++o) dot += dy[o] * fx[o];
        gw[t * nk + j] = dot;
      } else {
        expert_apply(cf, cf.d_hidden, p, x, fx.data(), nullptr, nullptr, nullptr);
      }
      for (size_t o = 0; o < nd; ++o) res.output[t * nd + o] += w * fx[o];
    }
  }
  return gw;
}

// SPEC §5-§6, the shared expert: y_t += f_s(x_t) for every token, dropped or not.
void shared_expert(const LayerCase& c, LayerResult& res, LayerGrads* grads) {
  if (!c.params.shared_expert) return;
  const LayerConfig& cf = c.config;
  const size_t nd = idx(cf.d_model), t_count = c.input.size() / nd;
  std::vector<double> fx(nd);
  for (size_t t = 0; t < t_count; ++t) {
    const double* x = &c.input[t * nd];
    if (grads != nullptr) {
      expert_apply(cf, cf.d_shared_hidden, *c.params.shared_expert, x, fx.data(),
                   &c.grad_output[t * nd], &grads->input[t * nd], &*grads->params.shared_expert);
    } else {
      expert_apply(cf, cf.d_shared_hidden, *c.params.shared_expert, x, fx.data(), nullptr,
                   nullptr, nullptr);
    }
    for (size_t o = 0; o < nd; ++o) res.output[t * nd + o] += fx[o];
  }
}

// dL/ds of one token through its weights w_j = rsf · n_j(s) (SPEC 3), added into gs [E].
void weights_backward(const LayerConfig& cf, const double* s, const int64_t* choices,
                      const double* weights, const double* gw, std::vector<double>& gs) {
  const size_t nk = idx(cf.top_k);
  const double rsf = cf.routed_scaling_factor;
  if (!cf.normalize_topk) {
    for (size_t j = 0; j < nk; ++j) gs[idx(choices[j])] += rsf * gw[j];
  } else if (nk > 1) {
    // w_j = rsf s_j / S, S = Σ_i s_i over all k choices (kept or not, since normalization
    // precedes dropping): dL/ds_i = (rsf gw_i - Σ_j gw_j w_j) / S.
    double sum = 0, dot = 0;
    for (size_t j = 0; j < nk; ++j) {
      sum += s[idx(choices[j])];
      dot += gw[j] * weights[j];
    }
    for (size_t j = 0; j < nk; ++j) gs[idx(choices[j])] += (rsf * gw[j] - dot) / sum;
  }  // normalize_topk with k = 1: the weight is the constant rsf, gradient exactly zero.
}

// dL/dz of one token from dL/ds, through the gate's nonlinearity, plus the z-loss.
// gp_aux [E] is d L_aux / d p_{t,e}, the same for every token.
void scores_backward(const LayerConfig& cf, const detail::Routing& rt, size_t t,
                     const std::vector<double>& gp_aux, std::vector<double>& gs,
                     std::vector<double>& gz) {
  const size_t ne = idx(cf.num_experts);
  const double* s = &rt.scores[t * ne];
  const double t_double = static_cast<double>(rt.lse.size());
  // d/dz_e (lse²) = 2 lse softmax(z)_e.
  const double zscale = cf.z_loss_coef * 2.0 * rt.lse[t] / t_double;
  if (!detail::is_sigmoid(cf)) {
    // p = s = softmax(z): one softmax backward for the weights, the aux loss and the z-loss.
    for (size_t e = 0; e < ne; ++e) gs[e] += gp_aux[e];
    double sg = 0;
    for (size_t e = 0; e < ne; ++e) sg += s[e] * gs[e];
    for (size_t e = 0; e < ne; ++e) gz[e] = s[e] * (gs[e] - sg) + zscale * s[e];
    return;
  }
  // p = s / Σ s: dL/ds_i += (gp_i - Σ_e gp_e p_e) / Σ s.
  const double* p = &rt.probs[t * ne];
  double total = 0, pg = 0;
  for (size_t e = 0; e < ne; ++e) {
    total += s[e];
    pg += p[e] * gp_aux[e];
  }
  for (size_t e = 0; e < ne; ++e) gs[e] += (gp_aux[e] - pg) / total;
  const double* z = &rt.logits[t * ne];
  for (size_t e = 0; e < ne; ++e) {
    gz[e] = gs[e] * s[e] * (1.0 - s[e]) + zscale * std::exp(z[e] - rt.lse[t]);
  }
}

// SPEC §8, router path. No gradient through the top-k or group selection, f_e, or into the
// selection bias.
void router_backward(const LayerCase& c, const detail::Routing& rt, const std::vector<double>& f,
                     const std::vector<double>& gw, LayerGrads& grads) {
  const LayerConfig& cf = c.config;
  const size_t ne = idx(cf.num_experts), nd = idx(cf.d_model), nk = idx(cf.top_k);
  const size_t t_count = rt.lse.size();
  const double t_double = static_cast<double>(t_count);
  // Load-balancing loss: d/dp_{t,e} of coef * E * Σ_e f_e P_e.
  std::vector<double> gp_aux(ne);
  for (size_t e = 0; e < ne; ++e) {
    gp_aux[e] = cf.aux_loss_coef * static_cast<double>(cf.num_experts) * f[e] / t_double;
  }
  std::vector<double> gs(ne), gz(ne);
  for (size_t t = 0; t < t_count; ++t) {
    std::fill(gs.begin(), gs.end(), 0.0);
    weights_backward(cf, &rt.scores[t * ne], &rt.choices[t * nk], &rt.weights[t * nk],
                     &gw[t * nk], gs);
    scores_backward(cf, rt, t, gp_aux, gs, gz);
    // z = x gateᵀ.
    const double* x = &c.input[t * nd];
    for (size_t e = 0; e < ne; ++e) {
      for (size_t l = 0; l < nd; ++l) {
        grads.input[t * nd + l] += gz[e] * c.params.gate[e * nd + l];
        grads.params.gate[e * nd + l] += gz[e] * x[l];
      }
    }
  }
}

}  // namespace

LayerResult run_reference(const LayerCase& c) {
  const detail::Routing rt = detail::route(c);
  const LayerConfig& cf = c.config;
  const size_t nd = idx(cf.d_model), nk = idx(cf.top_k);
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
  res.score_bias_updated = updated_score_bias(cf, c.params.score_bias, rt.counts);
  count_drops(rt, nk, res);
  const std::vector<double> f = aux_losses(cf, rt, res);

  std::optional<LayerGrads> grads;
  if (with_grads) grads = zero_grads(c);
  LayerGrads* g = grads ? &*grads : nullptr;
  const std::vector<double> gw = routed_experts(c, rt, res, g);
  shared_expert(c, res, g);
  if (g != nullptr) {
    router_backward(c, rt, f, gw, *g);
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
