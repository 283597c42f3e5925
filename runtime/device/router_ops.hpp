// The router's work (SPEC.md sections 3 and 7, backward of section 8) as data-path kernels: one
// op per token for the scores, the group-limited top-k and the weights; one per expert (or one in
// all) for this rank's partial sums of the losses, in a fixed token order so every run gives the
// same bits; one per token for the backward; one per expert for the selection-bias update. The
// host router (runtime/router.cpp) runs these very ops through the host launcher; a CUDA build
// launches them as kernels (runtime/device/device_kernels.cu).
//
// Every op reads plain pointers to row-major arrays ([T, E] per token, [T, k] per choice) and
// writes only the entries its own index owns.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "experts/device/host_device.hpp"

namespace moe::device {

// What the router needs of the layer's configuration.
struct RouterDims {
  std::int64_t num_experts = 0;
  std::int64_t top_k = 0;
  std::int64_t n_group = 1;            // G; divides num_experts
  std::int64_t groups_per_token = 1;   // M <= G; M == G: every group selectable
  bool sigmoid = false;                // gate = sigmoid (else softmax)
  bool normalize_topk = false;
  float routed_scaling_factor = 1.0f;  // multiplies every weight after the normalization
};

// The index of the largest of v[0, n), ties to the smaller index (SPEC.md section 3), which is
// then marked taken (-inf). Needs a finite value among v: the router's scores always are, and the
// callers take no more values than are selectable.
MOE_HOST_DEVICE inline std::int64_t take_largest(float* v, std::int64_t n) {
  std::int64_t best = 0;
  for (std::int64_t i = 1; i < n; ++i) {
    if (v[i] > v[best]) best = i;
  }
  v[best] = -std::numeric_limits<float>::infinity();
  return best;
}

// The indices of the k largest of v[0, n) into top[0, k), descending, ties to the smaller index
// (SPEC.md section 3): one pass keeping top sorted, inserting a value only when it beats the
// current k-th (strictly, so an equal later index never overtakes an earlier one). -inf values
// (masked) are never taken while k finite values exist.
MOE_HOST_DEVICE inline void top_k_indices(const float* v, std::int64_t n, std::int64_t k,
                                          std::int32_t* top) {
  std::int64_t filled = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    if (filled == k && !(v[i] > v[top[k - 1]])) continue;
    std::int64_t pos = filled < k ? filled++ : k - 1;
    while (pos > 0 && v[i] > v[top[pos - 1]]) {
      top[pos] = top[pos - 1];
      --pos;
    }
    top[pos] = static_cast<std::int32_t>(i);
  }
}

// log Σ_e exp(z_e) of one row, in double around the float maximum.
MOE_HOST_DEVICE inline double row_logsumexp(const float* z, std::int64_t n) {
  float max_logit = z[0];
  for (std::int64_t e = 1; e < n; ++e) max_logit = z[e] > max_logit ? z[e] : max_logit;
  double sum = 0;
  for (std::int64_t e = 0; e < n; ++e) sum += std::exp(static_cast<double>(z[e] - max_logit));
  return static_cast<double>(max_logit) + std::log(sum);
}

// Token t: scores s (softmax or sigmoid of the logits z), selection scores q = s (+ bias with
// sigmoid) limited to the best groups, the top-k experts by q (descending, ties to the smaller
// index) and their weights s (normalized, then scaled). With softmax, `scores` may be `logits`
// (the probabilities replace the logits in place).
struct RouteTokenOp {
  RouterDims dims;
  const float* logits;      // [T, E] z
  const float* bias;        // [E] selection bias (sigmoid only)
  float* scores;            // [T, E] s
  float* selection;         // [T, E] workspace: q, -inf where its group is not selectable
  float* group_score;       // [T, G] workspace (only with groups_per_token < n_group)
  float* logsumexp;         // [T]
  float* score_sum;         // [T] Σ_e s (sigmoid only)
  std::int32_t* expert;     // [T, k]
  float* weight;            // [T, k]

  MOE_HOST_DEVICE void operator()(std::int64_t t) const {
    const std::int64_t num_experts = dims.num_experts, k = dims.top_k;
    const float* z = logits + t * num_experts;
    float* s = scores + t * num_experts;
    float* q = selection + t * num_experts;
    logsumexp[t] = static_cast<float>(row_logsumexp(z, num_experts));
    if (dims.sigmoid) {
      double sum = 0;
      for (std::int64_t e = 0; e < num_experts; ++e) {
        s[e] = 1.0f / (1.0f + std::exp(-z[e]));
        sum += s[e];
        q[e] = s[e] + bias[e];
      }
      score_sum[t] = static_cast<float>(sum);
    } else {
      float max_logit = z[0];
      for (std::int64_t e = 1; e < num_experts; ++e) max_logit = z[e] > max_logit ? z[e] : max_logit;
      double sum = 0;
      for (std::int64_t e = 0; e < num_experts; ++e) {
        s[e] = std::exp(z[e] - max_logit);
        sum += s[e];
      }
      const auto inv_sum = static_cast<float>(1.0 / sum);
      for (std::int64_t e = 0; e < num_experts; ++e) {
        s[e] *= inv_sum;
        q[e] = s[e];
      }
    }
    if (dims.groups_per_token < dims.n_group) limit_to_groups(q, group_score + t * dims.n_group);

    std::int32_t* chosen = expert + t * k;
    float* w = weight + t * k;
    top_k_indices(q, num_experts, k, chosen);
    for (std::int64_t j = 0; j < k; ++j) w[j] = s[chosen[j]];
    if (dims.normalize_topk) {
      // With k = 1 the weight is exactly 1 (w / w), as SPEC.md section 8 asks.
      float total = 0;
      for (std::int64_t j = 0; j < k; ++j) total += w[j];
      for (std::int64_t j = 0; j < k; ++j) w[j] /= total;
    }
    for (std::int64_t j = 0; j < k; ++j) w[j] *= dims.routed_scaling_factor;
  }

  // Only the experts of the groups_per_token groups with the largest group scores (the sum of
  // the group's min(2, E/G) largest q; ties to the smaller group) stay selectable: q of the
  // others becomes -inf. Group scores are finite, so after the choice the chosen groups are
  // exactly those marked -inf.
  MOE_HOST_DEVICE void limit_to_groups(float* q, float* group) const {
    const std::int64_t num_groups = dims.n_group, per_group = dims.num_experts / num_groups;
    for (std::int64_t g = 0; g < num_groups; ++g) {
      float first = -std::numeric_limits<float>::infinity(), second = first;
      for (std::int64_t e = g * per_group; e < (g + 1) * per_group; ++e) {
        if (q[e] > first) {
          second = first;
          first = q[e];
        } else if (q[e] > second) {
          second = q[e];
        }
      }
      group[g] = per_group == 1 ? first : first + second;
    }
    for (std::int64_t i = 0; i < dims.groups_per_token; ++i) take_largest(group, num_groups);
    for (std::int64_t g = 0; g < num_groups; ++g) {
      if (group[g] == -std::numeric_limits<float>::infinity()) continue;
      for (std::int64_t e = g * per_group; e < (g + 1) * per_group; ++e) {
        q[e] = -std::numeric_limits<float>::infinity();
      }
    }
  }
};

// Expert e: this rank's Σ_t p_{t,e}, the load-balancing loss's probabilities (the scores,
// normalized per token with sigmoid), summed in token order in double.
struct ProbSumOp {
  std::int64_t num_tokens, num_experts;
  bool sigmoid;
  const float* scores;     // [T, E]
  const float* score_sum;  // [T] (sigmoid only)
  double* prob_sum;        // [E]

  MOE_HOST_DEVICE void operator()(std::int64_t e) const {
    double sum = 0;
    for (std::int64_t t = 0; t < num_tokens; ++t) {
      const double s = scores[t * num_experts + e];
      sum += sigmoid ? s / static_cast<double>(score_sum[t]) : s;
    }
    prob_sum[e] = sum;
  }
};

// Expert e: this rank's top-k assignments to e before dropping.
struct CountOp {
  std::int64_t num_assignments;  // T * k
  const std::int32_t* expert;    // [T * k]
  std::int64_t* counts;          // [E]

  MOE_HOST_DEVICE void operator()(std::int64_t e) const {
    std::int64_t count = 0;
    for (std::int64_t a = 0; a < num_assignments; ++a) count += expert[a] == e ? 1 : 0;
    counts[e] = count;
  }
};

// Index 0 only: this rank's Σ_t (logsumexp z_t)², in token order, for the z-loss.
struct LogsumexpSquareSumOp {
  std::int64_t num_tokens;
  const float* logsumexp;  // [T]
  double* sum;             // [1]

  MOE_HOST_DEVICE void operator()(std::int64_t) const {
    double total = 0;
    for (std::int64_t t = 0; t < num_tokens; ++t) {
      const double lse = logsumexp[t];
      total += lse * lse;
    }
    *sum = total;
  }
};

// Token t of the router's backward: d_logits = dL/dz from the selected weights' gradient d_weight
// (through the scaling, normalize_topk and the scores) and from the two losses. No gradient flows
// through the top-k or group choice, f_e or the selection bias (SPEC.md section 8).
struct RouteBackwardTokenOp {
  RouterDims dims;
  double aux_scale;  // g_aux · aux_loss_coef · E / (T² k), T of the group: dL_aux/dp = aux_scale · c_e
  double z_scale;    // g_z · z_loss_coef · 2 / T
  const std::int64_t* expert_counts;  // [E] group-wide, before dropping
  const float* scores;                // [T, E]
  const float* logits;                // [T, E] (sigmoid only)
  const float* score_sum;             // [T] (sigmoid only)
  const float* logsumexp;             // [T]
  const std::int32_t* expert;         // [T, k]
  const float* d_weight;              // [T, k]
  float* d_logits;                    // [T, E]

  MOE_HOST_DEVICE void operator()(std::int64_t t) const {
    const std::int64_t num_experts = dims.num_experts, k = dims.top_k;
    const double scale = dims.routed_scaling_factor;
    const float* s = scores + t * num_experts;
    const std::int32_t* chosen = expert + t * k;
    const float* dw = d_weight + t * k;
    float* ds = d_logits + t * num_experts;  // ds first, turned into dz below

    // The aux term. With sigmoid, p = s / Σs: ds_m = (a_m − Σ_e a_e p_e) / Σs.
    for (std::int64_t e = 0; e < num_experts; ++e) {
      ds[e] = static_cast<float>(aux_scale * static_cast<double>(expert_counts[e]));
    }
    if (dims.sigmoid) {
      const double sum = score_sum[t];
      double a_dot_p = 0;
      for (std::int64_t e = 0; e < num_experts; ++e) a_dot_p += static_cast<double>(ds[e]) * s[e] / sum;
      for (std::int64_t e = 0; e < num_experts; ++e) ds[e] = static_cast<float>((ds[e] - a_dot_p) / sum);
    }
    // The selected weights' part: w_j = scale · s_j (/ S with normalize_topk, S = Σ_selected s).
    if (!dims.normalize_topk) {
      for (std::int64_t j = 0; j < k; ++j) ds[chosen[j]] += static_cast<float>(scale * dw[j]);
    } else if (k > 1) {
      // ds_j = scale · (dw_j − Σ_i dw_i ŵ_i) / S with ŵ_i = s_i / S.
      // With k = 1 the weight is exactly `scale` and nothing flows (SPEC.md section 8).
      double selected_sum = 0;
      for (std::int64_t j = 0; j < k; ++j) selected_sum += s[chosen[j]];
      double dw_dot_w = 0;
      for (std::int64_t j = 0; j < k; ++j) dw_dot_w += static_cast<double>(dw[j]) * s[chosen[j]] / selected_sum;
      for (std::int64_t j = 0; j < k; ++j) {
        ds[chosen[j]] += static_cast<float>(scale * (dw[j] - dw_dot_w) / selected_sum);
      }
    }
    const double lse = logsumexp[t];
    const double z_term = z_scale * lse;
    if (dims.sigmoid) {
      // s' = s (1 − s); the z-loss acts on the logits through their softmax.
      const float* z = logits + t * num_experts;
      for (std::int64_t e = 0; e < num_experts; ++e) {
        const double softmax = std::exp(static_cast<double>(z[e]) - lse);
        ds[e] = static_cast<float>(ds[e] * s[e] * (1.0 - s[e]) + z_term * softmax);
      }
    } else {
      // Softmax backward, plus the z-loss which acts on the logits directly.
      double p_dot_dp = 0;
      for (std::int64_t e = 0; e < num_experts; ++e) p_dot_dp += static_cast<double>(s[e]) * ds[e];
      for (std::int64_t e = 0; e < num_experts; ++e) {
        ds[e] = static_cast<float>(s[e] * (ds[e] - p_dot_dp + z_term));
      }
    }
  }
};

// Expert e of the selection-bias update (SPEC.md section 3): b_e += rate · sign(mean(c) − c_e),
// from the group-wide counts before dropping. The sign is taken in integers (mean − c_e has the
// sign of Σc − E·c_e), so sign(0) = 0 exactly.
struct SelectionBiasUpdateOp {
  std::int64_t num_experts;
  double rate;
  const std::int64_t* counts;  // [E]
  float* bias;                 // [E]

  MOE_HOST_DEVICE void operator()(std::int64_t e) const {
    std::int64_t total = 0;
    for (std::int64_t i = 0; i < num_experts; ++i) total += counts[i];
    const std::int64_t diff = total - num_experts * counts[e];
    const double sign = diff > 0 ? 1.0 : diff < 0 ? -1.0 : 0.0;
    bias[e] = static_cast<float>(static_cast<double>(bias[e]) + rate * sign);
  }
};

}  // namespace moe::device
