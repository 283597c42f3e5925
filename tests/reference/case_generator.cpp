// Deterministic layer cases for tests: the same CaseSpec gives the same case on every platform.
#include "tests/reference/moe_reference.hpp"

#include "tests/reference/reference_internal.hpp"

#include <cmath>
#include <stdexcept>

namespace moe::ref {
namespace {

using std::int64_t;
using std::size_t;

// splitmix64: tiny, well mixed, and fully specified (unlike the std:: distributions).
class Rng {
 public:
  explicit Rng(std::uint64_t seed) : state_(seed) {}
  std::uint64_t next() {
    std::uint64_t z = (state_ += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  // Uniform in [0, 1), exact: 53 random bits.
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }
  // Mean 0, variance 1, bell-shaped: the sum of four uniforms (variance 1/3) times sqrt(3).
  // Only +, -, * and sqrt (all correctly rounded by IEEE 754), so, unlike Box-Muller's
  // log/cos, every libm gives the same bits.
  double normal() {
    const double s = uniform() + uniform() + uniform() + uniform() - 2.0;
    return s * std::sqrt(3.0);
  }

 private:
  std::uint64_t state_;
};

std::uint64_t mix(std::uint64_t a, std::uint64_t b) {
  return Rng(a ^ Rng(b + 0x632be59bd9b4e019ULL).next()).next();
}

// The implementation under test takes fp32: every value must survive the round trip.
double as_float(double v) { return static_cast<double>(static_cast<float>(v)); }

std::vector<double> draw(Rng& rng, int64_t n, double scale) {
  std::vector<double> v(static_cast<size_t>(n));
  for (double& x : v) x = as_float(scale * rng.normal());
  return v;
}

// Router logits of standard deviation ~kGateSpread, so that top-k choices are clear.
constexpr double kGateSpread = 2.0;
// With hot_expert, input feature 0 is ~1 for every token and gate[0][0] adds this much to
// expert 0's logit: ~4 logit standard deviations, so nearly every token chooses expert 0 first.
constexpr double kHotLogit = 4.0 * kGateSpread;

void draw_row(Rng& rng, const CaseSpec& spec, double* row) {
  const int64_t d = spec.config.d_model;
  for (int64_t l = 0; l < d; ++l) row[l] = as_float(rng.normal());
  if (spec.hot_expert) row[0] = as_float(1.0 + 0.1 * rng.normal());
}

// One expert (routed, or the shared one with hidden = d_shared_hidden); the draw order is that
// of version 1.
ExpertParams draw_expert(Rng& rng, const LayerConfig& cf, int64_t hidden) {
  const int64_t d = cf.d_model;
  const double sd = 1.0 / std::sqrt(static_cast<double>(d));
  const double sh = 1.0 / std::sqrt(static_cast<double>(hidden));
  const bool swiglu = cf.activation == "swiglu";
  ExpertParams p;
  p.w1 = draw(rng, hidden * d, sd);  // ~1/sqrt(fan_in), as a real init
  if (!swiglu) p.b1 = draw(rng, hidden, 0.1);
  p.w2 = draw(rng, d * hidden, sh);
  if (!swiglu) p.b2 = draw(rng, d, 0.1);
  if (swiglu) p.w3 = draw(rng, hidden * d, sd);
  return p;
}

// Stream ids for mix(seed, id). 0 is the version-1 stream and rounds 1..kMaxRounds the redraws'
// (mixed again with the row), so these sit far above them.
constexpr std::uint64_t kScoreBiasStream = 0x5b1a5ULL << 32;
constexpr std::uint64_t kSharedExpertStream = 0x54a3edULL << 32;
// The selection bias against sigmoid scores in (0, 1) with logits of spread kGateSpread: enough
// to change some tokens' choices (so a test sees q select and s weigh), small enough that the
// router still follows the logits.
constexpr double kScoreBiasSpread = 0.1;

constexpr int kMaxRounds = 200;

}  // namespace

LayerCase make_case(const CaseSpec& spec) {
  const LayerConfig& cf = spec.config;
  const int64_t e_count = cf.num_experts, d = cf.d_model, h = cf.d_hidden;
  if (e_count < 1 || d < 1 || h < 1) {
    throw std::invalid_argument("moe::ref::make_case: num_experts, d_model, d_hidden >= 1");
  }
  if (spec.with_score_bias && cf.gate != "sigmoid") {
    throw std::invalid_argument("moe::ref::make_case: with_score_bias needs gate = sigmoid");
  }
  int64_t t_count = 0;
  for (int64_t tr : spec.tokens_per_rank) t_count += tr;

  LayerCase c;
  c.config = cf;
  c.tokens_per_rank = spec.tokens_per_rank;
  Rng rng(mix(spec.seed, 0));
  const double sd = 1.0 / std::sqrt(static_cast<double>(d));
  c.params.gate = draw(rng, e_count * d, kGateSpread * sd);
  if (spec.hot_expert) c.params.gate[0] = kHotLogit;
  for (int64_t e = 0; e < e_count; ++e) c.params.experts.push_back(draw_expert(rng, cf, h));
  c.input.resize(static_cast<size_t>(t_count * d));
  for (int64_t t = 0; t < t_count; ++t) draw_row(rng, spec, &c.input[static_cast<size_t>(t * d)]);
  if (spec.with_grad_output) c.grad_output = draw(rng, t_count * d, 1.0);
  // Version-2 tensors from streams of their own: the draws above stay those of version 1.
  if (spec.with_score_bias) {
    Rng bias_rng(mix(spec.seed, kScoreBiasStream));
    c.params.score_bias = draw(bias_rng, e_count, kScoreBiasSpread);
  }
  if (cf.d_shared_hidden > 0) {
    Rng shared_rng(mix(spec.seed, kSharedExpertStream));
    c.params.shared_expert = draw_expert(shared_rng, cf, cf.d_shared_hidden);
  }

  // SPEC §9: no two scores within 1e-6 at a top-k or capacity boundary. Redraw only the rows
  // whose decisions are too close, each round from its own stream, until every margin is clear.
  // (Redrawing whole cases would rarely succeed for large T.)
  for (int round = 1; round <= kMaxRounds; ++round) {
    const detail::Routing rt = detail::route(c);
    if (rt.min_margin >= kMinMargin) return c;
    for (int64_t t = 0; t < t_count; ++t) {
      if (rt.token_margin[static_cast<size_t>(t)] < kMinMargin) {
        Rng row_rng(mix(mix(spec.seed, static_cast<std::uint64_t>(round)),
                        static_cast<std::uint64_t>(t)));
        draw_row(row_rng, spec, &c.input[static_cast<size_t>(t * d)]);
      }
    }
  }
  throw std::runtime_error("moe::ref::make_case: no draw with margins >= 1e-5 (gate rows of "
                           "near-identical experts?)");
}

}  // namespace moe::ref
