// The synthetic task moe-train learns: inputs drawn from K clusters, each cluster with its own
// random nonlinear target function, so a model does best when its experts specialise by cluster.
//
//   token g: cluster c(g) uniform in 0..K-1, noise n(g) ~ N(0, I_d)
//            x = centers[c] + noise·n                     (input, [d])
//            y = B_c · tanh(A_c · n + a_c)                 (target, [d_out])
//
// with centers ~ N(0, I), A_c ~ N(0, 1/d) ([m, d]), a_c ~ N(0, 1/4), B_c ~ N(0, 1/m) ([d_out, m]).
// Everything is a pure function of (seed, stream name, token index) through the counter-based
// generator of runtime/initialization.hpp: any rank can produce any token, so data are sharded by
// rank without communication, and a resumed or resharded run sees exactly the same tokens.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace moe::apps {

struct TaskConfig {
  std::int64_t d_model = 64;      // input dimension (the model's d)
  std::int64_t d_out = 8;         // target dimension
  std::int64_t clusters = 8;      // K
  std::int64_t target_hidden = 8; // m, tanh units of each cluster's function
  double noise = 0.5;             // spread of a cluster around its centre
  std::uint64_t seed = 1;
};

// Rows of a batch, row-major.
struct Batch {
  std::int64_t tokens = 0;
  std::vector<float> x;                // [tokens, d_model]
  std::vector<float> target;           // [tokens, d_out]
  std::vector<std::int64_t> cluster;   // [tokens]
};

class SyntheticTask {
 public:
  // Draws the task's centres and functions from config.seed. Throws std::invalid_argument for a
  // non-positive dimension or cluster count, or a negative noise.
  explicit SyntheticTask(const TaskConfig& config);

  const TaskConfig& config() const { return config_; }

  // Tokens first .. first+count-1 of the stream `stream` ("train", "eval", ...) into `out`.
  void make_batch(std::string_view stream, std::int64_t first, std::int64_t count, Batch& out) const;

 private:
  TaskConfig config_;
  std::vector<float> centers_;   // [K, d]
  std::vector<float> a_;         // [K, m, d]
  std::vector<float> a_bias_;    // [K, m]
  std::vector<float> b_;         // [K, d_out, m]
};

}  // namespace moe::apps
