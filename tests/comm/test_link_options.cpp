// The --link-latency-us / --link-gbps helper of the programs (apps/link_options.hpp): parsing,
// refusal of bad values, and wrapping the communicator only when a link is asked for.
#include <catch2/catch.hpp>

#include <memory>
#include <vector>

#include "apps/link_options.hpp"
#include "apps/mpi_program.hpp"
#include "comm/mpi_communicator.hpp"

namespace {

namespace po = boost::program_options;
using moe::apps::LinkOptions;

LinkOptions parse(std::vector<const char*> args) {
  LinkOptions out;
  po::options_description desc;
  moe::apps::add_link_options(desc, out);
  args.insert(args.begin(), "program");
  po::variables_map vm;
  po::store(po::parse_command_line(static_cast<int>(args.size()), args.data(), desc), vm);
  po::notify(vm);
  moe::apps::finish_link_options(out);
  return out;
}

}  // namespace

TEST_CASE("link options: unset means the real network", "[apps][link]") {
  auto world = moe::comm::MpiCommunicator::world();
  const LinkOptions none = parse({});
  CHECK_FALSE(none.enabled());
  CHECK(moe::apps::link_summary(none) == "none");
  std::unique_ptr<moe::comm::Communicator> storage;
  CHECK(&moe::apps::with_link(none, *world, storage) == world.get());
  CHECK(storage == nullptr);
}

TEST_CASE("link options: either flag wraps the communicator", "[apps][link]") {
  auto world = moe::comm::MpiCommunicator::world();
  const LinkOptions link = parse({"--link-latency-us", "25", "--link-gbps", "12.5"});
  CHECK(link.enabled());
  CHECK(moe::apps::link_summary(link) == "latency 25 us, 12.5 GB/s");
  std::unique_ptr<moe::comm::Communicator> storage;
  moe::comm::Communicator& comm = moe::apps::with_link(link, *world, storage);
  const auto* decorated = dynamic_cast<const moe::comm::SimulatedLinkCommunicator*>(&comm);
  REQUIRE(decorated != nullptr);
  CHECK(&decorated->inner() == world.get());
  CHECK(decorated->model().latency_us == 25);
  CHECK(decorated->model().bandwidth_gbps == 12.5);
  CHECK(comm.rank() == world->rank());

  const LinkOptions bandwidth_only = parse({"--link-gbps", "3"});
  CHECK(bandwidth_only.enabled());
  CHECK(moe::apps::link_summary(bandwidth_only) == "latency 0 us, 3 GB/s");
  CHECK(moe::apps::link_summary(parse({"--link-latency-us", "7"})) ==
        "latency 7 us, unlimited bandwidth");
}

TEST_CASE("link options: a second class between nodes", "[apps][link]") {
  auto world = moe::comm::MpiCommunicator::world();
  const LinkOptions link = parse({"--link-latency-us", "5", "--link-gbps", "16", "--link-inter-gbps", "2"});
  CHECK(link.two_classes());
  CHECK(link.between_nodes().latency_us == 5);  // not given: as inside a node
  CHECK(link.between_nodes().bandwidth_gbps == 2);
  CHECK(moe::apps::link_summary(link) ==
        "latency 5 us, 16 GB/s inside a node, latency 5 us, 2 GB/s between nodes");
  std::unique_ptr<moe::comm::Communicator> storage;
  moe::comm::Communicator& comm = moe::apps::with_link(link, *world, storage, 1);
  const auto* decorated = dynamic_cast<const moe::comm::SimulatedLinkCommunicator*>(&comm);
  REQUIRE(decorated != nullptr);
  CHECK(decorated->between_nodes().bandwidth_gbps == 2);
  CHECK_FALSE(parse({"--link-gbps", "3"}).two_classes());
  CHECK_THROWS_WITH(parse({"--link-inter-gbps", "-2"}), Catch::Contains("--link-inter-gbps"));
}

TEST_CASE("link options: bad values are refused with the option's name", "[apps][link]") {
  CHECK_THROWS_WITH(parse({"--link-gbps", "-1"}), Catch::Contains("--link-gbps"));
  CHECK_THROWS_AS(parse({"--link-latency-us", "-5"}), moe::apps::UsageError);
  CHECK_THROWS_WITH(parse({"--link-latency-us", "inf"}), Catch::Contains("--link-latency-us"));
  CHECK_THROWS_AS(parse({"--link-gbps", "fast"}), po::error);
}
