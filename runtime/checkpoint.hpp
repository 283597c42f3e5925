// Sharded training checkpoints in the Hugging Face convention, reusable by any trainer.
//
// A checkpoint root holds one directory per saved step:
//
//   ROOT/step-00000200/model-00001-of-00002.safetensors   one file per shard (the trainer writes
//   ROOT/step-00000200/model-00002-of-00002.safetensors   one per expert-parallel rank)
//   ROOT/step-00000200/model.safetensors.index.json       tensor name -> file, checksums, metadata
//
// Atomicity: a step is written completely into ROOT/.tmp-step-N (every file fsynced), and only then
// renamed to ROOT/step-N (a directory rename is atomic) and ROOT fsynced. So a directory named
// step-N is always complete, a crash mid-save leaves at most a .tmp-* directory that loaders never
// read (the next save removes it), and the previous steps are untouched. Loading a root takes its
// newest step-N directory; older ones beyond the `keep` newest are removed only after a new one is
// in place. A step that already exists, or a root holding a later step, is never overwritten.
//
// Checksums: CRC-32 (zlib) of every shard file's bytes, with its size, is stored in the index, and
// the index carries a CRC-32 of its own content. CRC-32 is enough because the threat is accidental
// (a truncated copy, a flipped bit, a shard from another run), not tampering, and zlib's is fast
// and everywhere. A loader checks a file's size and checksum before parsing a byte of it.
//
// Resharding: tensors are found by name only (experts by their global index), so a checkpoint
// written by P shards loads on any number of ranks: each rank reads the files holding the tensors
// it asks for.
//
// Every function here that takes a communicator is collective, and every failure (a missing file,
// a bad checksum, a shape that does not match) is the same moe::Error on every rank.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "comm/communicator.hpp"

namespace moe {

// One fp32 tensor as a rank sees it: saved from `data`, or loaded into it.
struct CheckpointTensor {
  std::string name;
  std::vector<std::int64_t> shape;
  std::span<float> data;  // numel(shape) values
};

// What a rank writes when saving: the file `shard` of `num_shards`, holding `tensors`. A rank
// with shard == -1 writes nothing (its tensors are replicas another rank writes).
struct CheckpointShard {
  int shard = -1;
  int num_shards = 1;
  std::vector<CheckpointTensor> tensors;
};

struct SaveOptions {
  int keep = 2;  // complete checkpoints kept in the root (the newest ones); 0 keeps all
};

// Collective over `world`. Writes step `step` under `root` (created if missing) and returns its
// directory. Every shard 0..num_shards-1 must be written by exactly one rank, every tensor name
// must be unique across the shards. `metadata` (any JSON object, the same on every rank; rank 0's
// is written) is returned by open_checkpoint: trainers keep their step, configuration and data
// position there. Refuses (before writing anything) when the root already holds step `step` or a
// later one. On failure the temporary directory is removed and existing checkpoints are intact.
std::filesystem::path save_checkpoint(comm::Communicator& world, const std::filesystem::path& root,
                                      std::int64_t step, const CheckpointShard& mine,
                                      const nlohmann::json& metadata, const SaveOptions& options = {});

// A verified index: where each tensor lives, and each file's size and checksum.
struct CheckpointIndex {
  struct File {
    std::uint64_t bytes = 0;
    std::uint32_t crc32 = 0;
  };
  std::filesystem::path dir;  // the step directory
  std::int64_t step = 0;
  nlohmann::json metadata;    // the saver's metadata
  std::map<std::string, std::string> weight_map;  // tensor name -> file name in dir
  std::map<std::string, File> files;
};

// Collective. `path` is a checkpoint root (its newest complete step is used) or a step directory.
// Every rank reads the index and checks its checksum and structure (every tensor mapped to a file
// the index lists, file names without directories) and that every file exists with the recorded
// size, so a missing or truncated shard is refused before anything is loaded.
CheckpointIndex open_checkpoint(comm::Communicator& world, const std::filesystem::path& path);

// Collective. Fills each rank's `wanted` tensors (any rank may ask for any tensors, so a checkpoint
// of P shards loads on P' ranks). Each file a rank needs is read whole, its size and CRC-32
// checked against the index, parsed, and compared with the index (the same tensor names, no more,
// no fewer); every wanted tensor must exist, be F32 and have the expected shape. Destinations are
// written only after every rank has verified all of this.
void load_checkpoint(comm::Communicator& world, const CheckpointIndex& index,
                     std::span<const CheckpointTensor> wanted);

// The complete checkpoints (step-N directories) under `root`, oldest first; empty when there are
// none or `root` does not exist. Local: no collective.
std::vector<std::pair<std::int64_t, std::filesystem::path>> list_checkpoints(
    const std::filesystem::path& root);

// "model-00001-of-00004.safetensors" for shard 0 of 4, as Hugging Face names shards.
std::string shard_file_name(int shard, int num_shards);

inline constexpr const char* kIndexFileName = "model.safetensors.index.json";

// Recomputes the checksum an index carries over its own content; for tools that edit an index
// (and tests that build a broken one on purpose).
void seal_index(nlohmann::json& index);

}  // namespace moe
