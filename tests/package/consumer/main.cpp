// Uses moe-ep the way an application would, through the public header only: a communicator over
// MPI_COMM_WORLD, one MoE layer with deterministic parameters, one forward over a few tokens.
// Prints a checksum of the output, which tests/package/check_package.sh compares between the
// installed-package and subproject builds.
#include <moe_ep/moe_ep.hpp>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <vector>

int main(int argc, char** argv) {
  moe_ep::MpiEnvironment mpi(argc, argv);
  try {
    auto world = moe_ep::mpi_communicator(MPI_COMM_WORLD);
    moe_ep::Config config;
    config.num_experts = 4;
    config.d_model = 16;
    config.d_hidden = 32;
    config.top_k = 2;
    moe_ep::Layer layer(config, *world);
    layer.init_parameters(/*seed=*/1);

    constexpr std::int64_t num_tokens = 8;
    std::vector<float> x(static_cast<std::size_t>(num_tokens * config.d_model));
    for (std::size_t i = 0; i < x.size(); ++i) x[i] = std::sin(static_cast<float>(i));
    std::vector<float> y(x.size());
    moe_ep::ForwardContext ctx;
    layer.forward(x, y, ctx);

    double checksum = 0;
    for (std::size_t i = 0; i < y.size(); ++i) {
      checksum += static_cast<double>(y[i]) * static_cast<double>(i % 7 + 1);
    }
    std::printf("moe-ep %s consumer: ranks=%d tokens=%lld checksum=%.9e aux_loss=%.9e\n",
                MOE_VERSION, world->size(), static_cast<long long>(num_tokens), checksum, ctx.aux_loss());
    if (!std::isfinite(checksum) || checksum == 0) {
      std::fprintf(stderr, "consumer: the output is zero or not finite\n");
      return 1;
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "consumer: %s\n", e.what());
    return 1;
  }
}
