#include "runtime/auto_chunks.hpp"

#include <algorithm>
#include <cmath>

namespace moe {

// Pipelining C chunks costs about max(X, K) + min(X, K)/C + 2·C·λ for exchange time X, compute
// time K and fixed cost λ of one exchange; the best C is near sqrt(min(X, K) / (2λ)). Chunks are
// kept at 256 rows per expert GEMM or more, where the GEMMs still run near their peak. Chosen
// once, from the first call; a later run may choose differently when its timings differ, so a run
// that must be bitwise reproducible across runs sets a number.
int choose_auto_chunks(const AutoChunkInputs& in) {
  double exchange = 1e30, dispatch = 1e30, back = 1e30, compute = 0;
  for (const ChunkTimings& r : in.ranks) {
    exchange = std::min(exchange, r.exchange);  // the rank that waited least: pure transfer
    dispatch = std::min(dispatch, r.dispatch);
    back = std::min(back, r.back);
    compute = std::max(compute, r.experts);
  }
  // Each exchange has a rank that arrived last and so waited for nobody; but the rank that waited
  // least in both together still waited in the return for its slowest peer's experts. The least
  // of each, summed, is the transfer.
  if (in.exchanges_timed_apart) exchange = std::min(exchange, dispatch + back);
  const double hidden = std::min(exchange, compute), longest = std::max(exchange, compute);
  if (!(hidden > 0.05 * longest)) return 1;
  const double best = std::sqrt(hidden / (2.0 * std::max(in.empty_exchange_seconds, 1e-6)));
  const double rows_per_expert = static_cast<double>(in.kept_rows) / static_cast<double>(in.num_experts);
  const double local = static_cast<double>((in.num_experts + in.group_size - 1) / in.group_size);
  const double most = std::clamp(local * std::floor(rows_per_expert / 256.0), 1.0, 16.0);
  return static_cast<int>(std::clamp(std::round(best), 1.0, most));
}

}  // namespace moe
