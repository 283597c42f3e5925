// Uses moe-ep the way an application would: a communicator over MPI_COMM_WORLD, one MoE layer with
// deterministic parameters, one forward over a few tokens. Prints a checksum of the output, which
// tests/package/check_package.sh compares between the installed-package and subproject builds.
#include <mpi.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <vector>

#include "comm/mpi_communicator.hpp"
#include "comm/mpi_environment.hpp"
#include "moe_config.hpp"
#include "runtime/initialization.hpp"
#include "runtime/moe_layer.hpp"

int main(int argc, char** argv) {
  moe::comm::MpiEnvironment mpi(argc, argv);
  try {
    moe::comm::MpiCommunicator comm(MPI_COMM_WORLD);
    moe::MoeConfig config;
    config.num_experts = 4;
    config.d_model = 16;
    config.d_hidden = 32;
    config.top_k = 2;
    moe::MoeLayer layer(config, comm);
    moe::init_parameters(layer, /*seed=*/1);

    constexpr std::int64_t num_tokens = 8;
    std::vector<float> x(static_cast<std::size_t>(num_tokens * config.d_model));
    std::vector<float> y(x.size());
    moe::fill_normal(x, /*seed=*/2, "consumer.x");
    moe::ForwardContext ctx;
    const moe::ForwardResult& result = layer.forward(x, y, ctx);

    double checksum = 0;
    for (std::size_t i = 0; i < y.size(); ++i) {
      checksum += static_cast<double>(y[i]) * static_cast<double>(i % 7 + 1);
    }
    std::printf("moe-ep %s consumer: ranks=%d tokens=%lld checksum=%.9e aux_loss=%.9e\n",
                MOE_VERSION, comm.size(), static_cast<long long>(num_tokens), checksum,
                result.aux_loss);
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
