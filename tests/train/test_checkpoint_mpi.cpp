// Sharded checkpoints (runtime/checkpoint.hpp) on 1, 2 and 4 ranks: round trips, loading on
// another rank count, refusal of every kind of damage with the same error on every rank, and
// saves that never overwrite or lose a checkpoint, even when one rank fails mid-save.
//
// Only collective calls and CHECKs after them: a REQUIRE failing on one rank alone would leave the
// others waiting in the next collective.
#include <catch2/catch.hpp>
#include <sys/resource.h>

#include <csignal>
#include <fstream>
#include <map>

#include "comm/mpi_communicator.hpp"
#include "runtime/checkpoint.hpp"
#include "runtime/error.hpp"
#include "runtime/initialization.hpp"

namespace {

using namespace moe;
namespace fs = std::filesystem;
using Catch::Matchers::Contains;

// A fresh directory per test and rank count (CTest may run several rank counts at once).
fs::path fresh_root(comm::Communicator& world, const std::string& name) {
  const fs::path root =
      fs::current_path() / ("checkpoint_test_np" + std::to_string(world.size())) / name;
  if (world.rank() == 0) {
    fs::remove_all(root);
    fs::create_directories(root.parent_path());
  }
  world.barrier();
  return root;
}

// The tensors of a toy model: one replicated tensor and one "expert" per rank.
struct Toy {
  std::map<std::string, std::vector<std::int64_t>> shapes;
  std::map<std::string, std::vector<float>> values;

  Toy(int num_shards, std::uint64_t seed) {
    shapes["shared.weight"] = {3, 5};
    for (int s = 0; s < num_shards; ++s) shapes["experts." + std::to_string(s) + ".w1.weight"] = {4, 2};
    for (const auto& [name, shape] : shapes) {
      values[name].resize(static_cast<std::size_t>(shape[0] * shape[1]));
      fill_uniform(values[name], 1.0f, seed, name);
    }
  }
  CheckpointTensor tensor(const std::string& name) {
    return {name, shapes.at(name), values.at(name)};
  }
};

// Rank r writes shard r (holding expert r, and the shared tensor on rank 0).
fs::path save_toy(comm::Communicator& world, const fs::path& root, std::int64_t step, Toy& toy,
                  int keep = 0) {
  CheckpointShard mine;
  mine.shard = world.rank();
  mine.num_shards = world.size();
  if (world.rank() == 0) mine.tensors.push_back(toy.tensor("shared.weight"));
  mine.tensors.push_back(toy.tensor("experts." + std::to_string(world.rank()) + ".w1.weight"));
  return save_checkpoint(world, root, step, mine, {{"note", "toy"}, {"step", step}},
                         SaveOptions{keep});
}

// Every rank asks for every tensor: what a run on fewer ranks does, at the extreme.
Toy load_everything(comm::Communicator& world, const fs::path& path, int num_shards) {
  Toy loaded(num_shards, 999);
  std::vector<CheckpointTensor> wanted;
  for (const auto& entry : loaded.shapes) wanted.push_back(loaded.tensor(entry.first));
  load_checkpoint(world, open_checkpoint(world, path), wanted);
  return loaded;
}

std::map<fs::path, std::string> snapshot(const fs::path& root) {
  std::map<fs::path, std::string> files;
  for (const auto& entry : fs::recursive_directory_iterator(root)) {
    if (!entry.is_regular_file()) continue;
    std::ifstream in(entry.path(), std::ios::binary);
    files[entry.path()] = std::string(std::istreambuf_iterator<char>(in), {});
  }
  return files;
}

void write_text(const fs::path& path, const std::string& text) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << text;
}

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// Runs `damage` on rank 0 only, then lets every rank see the result.
template <class F>
void on_rank0(comm::Communicator& world, F&& damage) {
  if (world.rank() == 0) damage();
  world.barrier();
}

}  // namespace

TEST_CASE("a checkpoint round-trips bitwise and any rank can load any shard", "[checkpoint]") {
  auto world = comm::MpiCommunicator::world();
  const fs::path root = fresh_root(*world, "round_trip");
  Toy toy(world->size(), 7);
  const fs::path dir = save_toy(*world, root, 5, toy);
  CHECK(dir == root / "step-00000005");
  CHECK(fs::exists(dir / kIndexFileName));
  CHECK(fs::exists(dir / shard_file_name(world->size() - 1, world->size())));

  const CheckpointIndex index = open_checkpoint(*world, root);
  CHECK(index.step == 5);
  CHECK(index.metadata.at("note") == "toy");
  CHECK(index.files.size() == static_cast<std::size_t>(world->size()));
  CHECK(index.weight_map.at("shared.weight") == shard_file_name(0, world->size()));

  const Toy loaded = load_everything(*world, root, world->size());
  CHECK(loaded.values == toy.values);
}

TEST_CASE("a checkpoint written by fewer shards than ranks loads everywhere", "[checkpoint]") {
  auto world = comm::MpiCommunicator::world();
  const fs::path root = fresh_root(*world, "one_shard");
  Toy toy(world->size(), 11);
  CheckpointShard mine;  // rank 0 writes everything into one shard; the others write nothing
  if (world->rank() == 0) {
    mine.shard = 0;
    for (const auto& entry : toy.shapes) mine.tensors.push_back(toy.tensor(entry.first));
  }
  save_checkpoint(*world, root, 1, mine, nlohmann::json::object());
  const Toy loaded = load_everything(*world, root, world->size());
  CHECK(loaded.values == toy.values);
}

TEST_CASE("a damaged checkpoint is refused on every rank and nothing is lost", "[checkpoint]") {
  auto world = comm::MpiCommunicator::world();
  const int n = world->size();
  const fs::path root = fresh_root(*world, "damaged");
  Toy older(n, 1), newer(n, 2);
  const fs::path older_dir = save_toy(*world, root, 1, older);
  const fs::path dir = save_toy(*world, root, 2, newer);
  const fs::path last_shard = dir / shard_file_name(n - 1, n);
  const fs::path first_shard = dir / shard_file_name(0, n);
  std::string expected;

  SECTION("truncated shard") {
    on_rank0(*world, [&] { fs::resize_file(last_shard, fs::file_size(last_shard) / 2); });
    expected = "the index says";
  }
  SECTION("corrupted shard of the same size") {
    on_rank0(*world, [&] {
      std::string bytes = read_text(last_shard);
      bytes[bytes.size() - 3] ^= 0x10;  // one bit of one value
      write_text(last_shard, bytes);
    });
    expected = "fails its CRC-32 check (corrupted)";
  }
  SECTION("missing shard") {
    on_rank0(*world, [&] { fs::remove(last_shard); });
    expected = "is missing";
  }
  SECTION("corrupted index") {
    on_rank0(*world, [&] {
      std::string text = read_text(dir / kIndexFileName);
      text.replace(text.find("\"step\": 2"), 9, "\"step\": 3");
      write_text(dir / kIndexFileName, text);
    });
    expected = "does not match its checksum";
  }
  SECTION("index naming a tensor its file does not hold") {
    on_rank0(*world, [&] {
      auto index = nlohmann::json::parse(read_text(dir / kIndexFileName));
      index["weight_map"]["ghost.weight"] = shard_file_name(0, n);
      seal_index(index);  // a well-formed index that lies
      write_text(dir / kIndexFileName, index.dump(2));
    });
    expected = "maps 'ghost.weight' to " + first_shard.string() + ", which does not contain it";
  }
  SECTION("shard from another checkpoint") {
    on_rank0(*world, [&] {  // same names and sizes: only the checksum tells them apart
      fs::copy_file(older_dir / shard_file_name(0, n), first_shard,
                    fs::copy_options::overwrite_existing);
    });
    expected = "fails its CRC-32 check";
  }
  const auto before = snapshot(root);
  CHECK_THROWS_WITH(load_everything(*world, root, n), Contains(expected));
  CHECK(snapshot(root) == before);  // refusing touches nothing
  // The previous checkpoint is intact and loads.
  CHECK(load_everything(*world, older_dir, n).values == older.values);
}

TEST_CASE("a tensor the checkpoint lacks or holds in another shape is refused", "[checkpoint]") {
  auto world = comm::MpiCommunicator::world();
  const fs::path root = fresh_root(*world, "mismatch");
  Toy toy(world->size(), 3);
  save_toy(*world, root, 4, toy);
  const CheckpointIndex index = open_checkpoint(*world, root);
  std::vector<float> buffer(15, -1.0f);
  const std::vector<CheckpointTensor> transposed = {{"shared.weight", {5, 3}, buffer}};
  CHECK_THROWS_WITH(load_checkpoint(*world, index, transposed),
                    Contains("'shared.weight' has shape [3, 5], the model expects [5, 3]"));
  const std::vector<CheckpointTensor> unknown = {{"head.weight", {3, 5}, buffer}};
  CHECK_THROWS_WITH(load_checkpoint(*world, index, unknown), Contains("has no tensor 'head.weight'"));
  CHECK(buffer == std::vector<float>(15, -1.0f));  // nothing written before everything checked
}

TEST_CASE("saving never overwrites, shadows or loses a checkpoint", "[checkpoint]") {
  auto world = comm::MpiCommunicator::world();
  const fs::path root = fresh_root(*world, "saving");
  Toy toy(world->size(), 5), other(world->size(), 6);
  save_toy(*world, root, 2, toy);
  const auto before = snapshot(root);

  CHECK_THROWS_WITH(save_toy(*world, root, 2, other), Contains("already holds step 2"));
  CHECK_THROWS_WITH(save_toy(*world, root, 1, other), Contains("refusing to overwrite or shadow it"));
  CHECK(snapshot(root) == before);

  // One rank's disk fills up mid-save: every rank reports it, the temporary directory goes, the
  // previous checkpoint stays the newest.
  const bool failing = world->rank() == world->size() - 1;
  struct rlimit saved_limit {};
  if (failing) {
    std::signal(SIGXFSZ, SIG_IGN);  // a failing write(2) instead of a killed process
    getrlimit(RLIMIT_FSIZE, &saved_limit);
    struct rlimit tiny = saved_limit;
    tiny.rlim_cur = 64;
    setrlimit(RLIMIT_FSIZE, &tiny);
  }
  CHECK_THROWS_WITH(save_toy(*world, root, 3, other), Contains("File too large"));
  if (failing) setrlimit(RLIMIT_FSIZE, &saved_limit);
  CHECK(snapshot(root) == before);
  CHECK(list_checkpoints(root).back().first == 2);
  CHECK(load_everything(*world, root, world->size()).values == toy.values);

  // A crash mid-save leaves a temporary directory: never loaded, removed by the next save.
  on_rank0(*world, [&] {
    fs::create_directories(root / ".tmp-step-00000009");
    write_text(root / ".tmp-step-00000009" / kIndexFileName, "{");
  });
  CHECK(open_checkpoint(*world, root).step == 2);
  save_toy(*world, root, 3, other, 2);
  CHECK_FALSE(fs::exists(root / ".tmp-step-00000009"));
  save_toy(*world, root, 4, other, 2);  // keep 2: step 2 goes only once step 4 is complete
  const auto kept = list_checkpoints(root);
  REQUIRE(kept.size() == 2);
  CHECK(kept[0].first == 3);
  CHECK(kept[1].first == 4);
}
