// moe-bench --routing: the quota, the per-token choices, and that the learned router, given the
// forced gate and inputs, picks exactly those choices.
#include <catch2/catch.hpp>

#include <numeric>
#include <set>

#include "apps/forced_routing.hpp"
#include "apps/mpi_program.hpp"
#include "runtime/router.hpp"

using namespace moe;
using apps::RoutingSpec;

namespace {

// Routes T tokens of width d through the forced gate and inputs; returns the router's counts and
// checks each token's experts are its forced choices, in order.
std::vector<std::int64_t> route_forced(const std::string& text, std::int64_t experts, std::int64_t d,
                                       std::int64_t k, std::int64_t tokens) {
  const RoutingSpec spec = apps::parse_routing(text, experts, k, d);
  MoeConfig c;
  c.num_experts = experts;
  c.d_model = d;
  c.d_hidden = 4;
  c.top_k = k;
  std::vector<float> gate(static_cast<std::size_t>(experts * d)), x(static_cast<std::size_t>(tokens * d), 0.37f);
  const auto choices = apps::forced_choices(spec, experts, tokens, k, 7, 1);
  apps::write_forced_gate(gate, experts, d);
  apps::write_forced_inputs(choices, x, tokens, experts, d, k);
  RouterOutput out;
  route(c, gate, {}, x, tokens, out);
  for (std::int64_t t = 0; t < tokens; ++t) {
    std::set<std::int32_t> distinct;
    for (std::int64_t j = 0; j < k; ++j) {
      const auto i = static_cast<std::size_t>(t * k + j);
      REQUIRE(out.expert[i] == choices[i]);
      distinct.insert(choices[i]);
    }
    REQUIRE(distinct.size() == static_cast<std::size_t>(k));
  }
  return out.counts;
}

}  // namespace

TEST_CASE("balanced routing gives every expert T*k/E", "[forced_routing]") {
  const auto counts = route_forced("balanced", 8, 16, 2, 256);
  for (auto n : counts) CHECK(n == 64);
  CHECK(apps::max_over_mean(counts) == 1.0);
}

TEST_CASE("hot:E,P gives expert E the share P, the rest evenly", "[forced_routing]") {
  const auto counts = route_forced("hot:3,0.5", 8, 8, 2, 1000);
  CHECK(counts[3] == 1000);
  const std::int64_t total = std::accumulate(counts.begin(), counts.end(), std::int64_t{0});
  CHECK(total == 2000);
  for (std::size_t e = 0; e < 8; ++e) {
    if (e != 3) CHECK((counts[e] == 142 || counts[e] == 143));
  }
}

TEST_CASE("zipf:S follows 1/(e+1)^S, capped at one assignment per token", "[forced_routing]") {
  const auto counts = route_forced("zipf:1", 4, 4, 1, 2500);
  // Shares 1, 1/2, 1/3, 1/4 over 25/12: 1200, 600, 400, 300.
  CHECK(counts == std::vector<std::int64_t>{1200, 600, 400, 300});
  const auto capped = route_forced("zipf:3", 4, 4, 2, 100);
  CHECK(capped[0] == 100);  // 1/k of the assignments at most
  CHECK(std::accumulate(capped.begin(), capped.end(), std::int64_t{0}) == 200);
}

TEST_CASE("bad --routing values are refused with the option's name", "[forced_routing]") {
  CHECK_THROWS_WITH(apps::parse_routing("hot:0,0.7", 8, 2, 16), Catch::Contains("more than 1/k"));
  CHECK_THROWS_WITH(apps::parse_routing("hot:8,0.1", 8, 2, 16), Catch::Contains("0..7"));
  CHECK_THROWS_WITH(apps::parse_routing("zipf:x", 8, 2, 16), Catch::Contains("--routing 'zipf:x'"));
  CHECK_THROWS_WITH(apps::parse_routing("uniform", 8, 2, 16), Catch::Contains("unknown distribution"));
  CHECK_THROWS_WITH(apps::parse_routing("balanced", 64, 2, 32), Catch::Contains("d_model (32) >= experts (64)"));
  CHECK_NOTHROW(apps::parse_routing("learned", 64, 2, 32));
}
