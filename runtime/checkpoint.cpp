#include "runtime/checkpoint.hpp"

#include <fcntl.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <set>

#include "runtime/error.hpp"
#include "runtime/safetensors.hpp"

namespace moe {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kStepPrefix = "step-";
constexpr const char* kTempPrefix = ".tmp-step-";
constexpr const char* kFormat = "moe-ep sharded checkpoint v1";

std::uint32_t crc32_of(std::span<const std::byte> bytes) {
  // crc32_z takes a z_size_t length, so files beyond 4 GiB need no chunking.
  return static_cast<std::uint32_t>(
      crc32_z(0L, reinterpret_cast<const Bytef*>(bytes.data()), bytes.size()));
}

std::string hex32(std::uint32_t value) {
  char text[9];
  std::snprintf(text, sizeof text, "%08x", value);
  return text;
}

std::optional<std::uint32_t> parse_hex32(const std::string& text) {
  std::uint32_t value = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value, 16);
  if (ec != std::errc() || end != text.data() + text.size() || text.size() != 8) return std::nullopt;
  return value;
}

std::string step_dir_name(std::int64_t step) {
  char text[32];
  std::snprintf(text, sizeof text, "%s%08lld", kStepPrefix, static_cast<long long>(step));
  return text;
}

// Where step `step` is written before it is complete: ".tmp-step-00000200".
std::string temp_dir_name(std::int64_t step) {
  return kTempPrefix + step_dir_name(step).substr(std::strlen(kStepPrefix));
}

std::string errno_text() { return std::strerror(errno); }

// open(2) + fsync(2): makes a file's data, or a directory's entries, durable.
void fsync_path(const fs::path& path, bool directory) {
  const int fd = ::open(path.c_str(), directory ? (O_RDONLY | O_DIRECTORY) : O_RDONLY);
  if (fd < 0) throw Error("cannot open " + path.string() + " to sync it: " + errno_text());
  const int rc = ::fsync(fd);
  const std::string why = rc != 0 ? errno_text() : "";
  ::close(fd);
  if (rc != 0) throw Error("fsync of " + path.string() + " failed: " + why);
}

// Writes `bytes` to a new file and fsyncs it. The file lives in a temporary directory that only
// becomes visible as a checkpoint after everything in it is durable.
void write_durably(const fs::path& path, std::span<const std::byte> bytes) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL, 0644);
  if (fd < 0) throw Error("cannot create " + path.string() + ": " + errno_text());
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const std::string why = n < 0 ? errno_text() : "no progress";
      ::close(fd);
      throw Error("writing " + path.string() + " failed: " + why);
    }
    done += static_cast<std::size_t>(n);
  }
  const int rc = ::fsync(fd);
  const std::string why = rc != 0 ? errno_text() : "";
  if (::close(fd) != 0 || rc != 0) throw Error("fsync of " + path.string() + " failed: " + why);
}

std::vector<std::byte> read_whole_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("cannot open " + path.string());
  in.seekg(0, std::ios::end);
  const std::streamoff size = in.tellg();
  in.seekg(0, std::ios::beg);
  std::vector<std::byte> bytes(static_cast<std::size_t>(std::max<std::streamoff>(size, 0)));
  in.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  if (!in) throw Error("cannot read " + path.string());
  return bytes;
}

// Every rank's string, on every rank, in rank order (one allgather of fixed-size blocks).
std::vector<std::string> allgather_strings(comm::Communicator& comm, const std::string& mine) {
  std::int64_t longest = static_cast<std::int64_t>(mine.size());
  comm.allreduce(std::span<std::int64_t>(&longest, 1), comm::ReduceOp::max);
  const std::size_t block = sizeof(std::int64_t) + static_cast<std::size_t>(longest);
  std::vector<std::byte> send(block), all(block * static_cast<std::size_t>(comm.size()));
  const std::int64_t length = static_cast<std::int64_t>(mine.size());
  std::memcpy(send.data(), &length, sizeof length);
  std::memcpy(send.data() + sizeof length, mine.data(), mine.size());
  comm.allgather(send.data(), all.data(), block);
  std::vector<std::string> out;
  for (int r = 0; r < comm.size(); ++r) {
    const std::byte* p = all.data() + block * static_cast<std::size_t>(r);
    std::int64_t n = 0;
    std::memcpy(&n, p, sizeof n);
    out.emplace_back(reinterpret_cast<const char*>(p + sizeof n), static_cast<std::size_t>(n));
  }
  return out;
}

std::string shape_text(const std::vector<std::int64_t>& shape) {
  std::string text = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    text += (i ? ", " : "") + std::to_string(shape[i]);
  }
  return text + "]";
}

std::int64_t numel(const std::vector<std::int64_t>& shape) {
  std::int64_t n = 1;
  for (std::int64_t s : shape) n *= s;
  return n;
}

// The checksum covers the index's canonical serialization without the checksum field, so it does
// not depend on whitespace or key order in the file.
std::string index_checksum(json index) {
  index.erase("checksum");
  const std::string canonical = index.dump();
  return "crc32:" + hex32(crc32_of(std::as_bytes(std::span(canonical))));
}

// The local part of a save: checks what this rank contributes and serializes its shard.
std::vector<std::byte> serialize_shard(const CheckpointShard& mine, std::int64_t step) {
  if (mine.shard < -1 || mine.shard >= mine.num_shards || mine.num_shards < 1) {
    throw Error("save_checkpoint: shard " + std::to_string(mine.shard) + " of " +
                std::to_string(mine.num_shards) + " is out of range");
  }
  if (mine.shard == -1) {
    if (!mine.tensors.empty()) throw Error("save_checkpoint: a rank that writes no shard passed tensors");
    return {};
  }
  SafetensorsFile file;
  file.metadata = {{"format", "pt"}, {"step", std::to_string(step)}};
  for (const CheckpointTensor& t : mine.tensors) {
    if (numel(t.shape) != static_cast<std::int64_t>(t.data.size())) {
      throw Error("save_checkpoint: tensor '" + t.name + "' has shape " + shape_text(t.shape) +
                  " but " + std::to_string(t.data.size()) + " values");
    }
    if (!file.tensors.emplace(t.name, Tensor::from_f32(t.shape, t.data)).second) {
      throw Error("save_checkpoint: tensor '" + t.name + "' is given twice");
    }
  }
  return serialize_safetensors(file);
}

// Rank 0's checks of the root before a save: nothing at this step or later may exist. Also
// clears temporary directories that crashed saves left behind, then creates this save's.
fs::path prepare_root(const fs::path& root, std::int64_t step) {
  fs::create_directories(root);
  for (const auto& [existing, dir] : list_checkpoints(root)) {
    if (existing >= step) {
      throw Error("checkpoint directory " + root.string() + " already holds step " +
                  std::to_string(existing) + " (" + dir.filename().string() +
                  "), not before step " + std::to_string(step) +
                  ": refusing to overwrite or shadow it");
    }
  }
  for (const auto& entry : fs::directory_iterator(root)) {
    if (entry.path().filename().string().starts_with(kTempPrefix)) fs::remove_all(entry.path());
  }
  const fs::path temp = root / temp_dir_name(step);
  fs::create_directory(temp);
  return temp;
}

// Rank 0: builds the index from every rank's shard description and makes the step visible.
fs::path publish(const fs::path& root, const fs::path& temp, std::int64_t step, int num_shards,
                 const std::vector<std::string>& descriptions, const json& metadata, int keep) {
  json index;
  std::int64_t total_size = 0;
  index["weight_map"] = json::object();
  index["files"] = json::object();
  std::set<int> written;
  for (const std::string& text : descriptions) {
    if (text.empty()) continue;  // a rank that writes no shard
    const json d = json::parse(text);
    written.insert(d.at("shard").get<int>());
    const std::string file = d.at("file");
    index["files"][file] = {{"bytes", d.at("bytes")}, {"crc32", d.at("crc32")}};
    for (const auto& [name, bytes] : d.at("tensors").items()) {
      if (index["weight_map"].contains(name)) {
        throw Error("save_checkpoint: tensor '" + name + "' is written by two shards");
      }
      index["weight_map"][name] = file;
      total_size += bytes.get<std::int64_t>();
    }
  }
  if (static_cast<int>(written.size()) != num_shards) {
    throw Error("save_checkpoint: " + std::to_string(written.size()) + " distinct shards written, " +
                std::to_string(num_shards) + " expected (each shard by exactly one rank)");
  }
  index["metadata"] = {{"total_size", total_size}, {"format", kFormat}, {"step", step},
                       {"num_shards", num_shards}, {"user", metadata}};
  seal_index(index);
  const std::string text = index.dump(2) + "\n";
  write_durably(temp / kIndexFileName, std::as_bytes(std::span(text)));
  fsync_path(temp, true);
  const fs::path final_dir = root / step_dir_name(step);
  fs::rename(temp, final_dir);
  fsync_path(root, true);  // the rename itself is durable from here on
  if (keep > 0) {
    auto all = list_checkpoints(root);
    for (std::size_t i = 0; i + static_cast<std::size_t>(keep) < all.size(); ++i) {
      fs::remove_all(all[i].second);
    }
  }
  return final_dir;
}

}  // namespace

std::string shard_file_name(int shard, int num_shards) {
  char text[64];
  std::snprintf(text, sizeof text, "model-%05d-of-%05d.safetensors", shard + 1, num_shards);
  return text;
}

void seal_index(json& index) { index["checksum"] = index_checksum(index); }

std::vector<std::pair<std::int64_t, fs::path>> list_checkpoints(const fs::path& root) {
  std::vector<std::pair<std::int64_t, fs::path>> out;
  std::error_code ec;
  if (!fs::is_directory(root, ec)) return out;
  for (const auto& entry : fs::directory_iterator(root)) {
    const std::string name = entry.path().filename().string();
    if (!entry.is_directory() || !name.starts_with(kStepPrefix)) continue;
    const std::string digits = name.substr(std::strlen(kStepPrefix));
    std::int64_t step = 0;
    const auto [end, err] = std::from_chars(digits.data(), digits.data() + digits.size(), step);
    if (err != std::errc() || end != digits.data() + digits.size() || digits.empty()) continue;
    out.emplace_back(step, entry.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

fs::path save_checkpoint(comm::Communicator& world, const fs::path& root, std::int64_t step,
                         const CheckpointShard& mine, const json& metadata,
                         const SaveOptions& options) {
  const bool leader = world.rank() == 0;
  std::vector<std::byte> bytes;
  fs::path temp;
  collectively(world, [&] {
    if (options.keep < 0) throw Error("save_checkpoint: keep must be >= 0");
    bytes = serialize_shard(mine, step);
  });
  // Only once every rank has its shard ready: creating the temporary directory is the last thing
  // prepare_root does, so if this fails there is nothing to clean up.
  collectively(world, [&] {
    if (leader) temp = prepare_root(root, step);
  });
  // From here on a failure must not leave the temporary directory behind.
  fs::path final_dir;
  try {
    // Rank 0 created the directory; the other ranks see it after this agreement (a collective).
    const std::string file = mine.shard >= 0 ? shard_file_name(mine.shard, mine.num_shards) : "";
    const fs::path temp_dir = root / temp_dir_name(step);
    collectively(world, [&] {
      if (!file.empty()) write_durably(temp_dir / file, bytes);
    });
    std::string description;
    if (!file.empty()) {
      json tensors = json::object();
      for (const CheckpointTensor& t : mine.tensors) {
        tensors[t.name] = static_cast<std::int64_t>(t.data.size() * sizeof(float));
      }
      description = json{{"shard", mine.shard}, {"file", file}, {"bytes", bytes.size()},
                         {"crc32", hex32(crc32_of(bytes))}, {"tensors", tensors}}.dump();
    }
    const std::vector<std::string> descriptions = allgather_strings(world, description);
    collectively(world, [&] {
      if (leader) {
        final_dir = publish(root, temp, step, mine.num_shards, descriptions, metadata, options.keep);
      }
    });
  } catch (const Error&) {
    // An agreed error: every rank is here. Clean up, and let no rank return before the temporary
    // directory is gone, so the caller sees the root exactly as it was.
    if (leader) {
      std::error_code ignored;
      fs::remove_all(temp, ignored);
    }
    world.barrier();
    throw;
  }
  return root / step_dir_name(step);
}

CheckpointIndex open_checkpoint(comm::Communicator& world, const fs::path& path) {
  CheckpointIndex index;
  collectively(world, [&] {
    if (fs::exists(path / kIndexFileName)) {
      index.dir = path;
    } else {
      const auto all = list_checkpoints(path);
      if (all.empty()) {
        throw Error("no checkpoint in " + path.string() + " (no " + kIndexFileName +
                    " and no complete step-N directory)");
      }
      index.dir = all.back().second;
    }
    const fs::path index_path = index.dir / kIndexFileName;
    const std::string where = "checkpoint index " + index_path.string();
    const std::vector<std::byte> bytes = read_whole_file(index_path);
    json j;
    try {
      j = json::parse(reinterpret_cast<const char*>(bytes.data()),
                      reinterpret_cast<const char*>(bytes.data() + bytes.size()));
    } catch (const json::exception& e) {
      throw Error(where + " is not valid JSON (truncated?): " + e.what());
    }
    if (!j.is_object() || !j.contains("checksum") || !j["checksum"].is_string()) {
      throw Error(where + " has no checksum");
    }
    if (j["checksum"].get<std::string>() != index_checksum(j)) {
      throw Error(where + " does not match its checksum (corrupted or edited)");
    }
    try {
      const json& meta = j.at("metadata");
      if (meta.at("format") != kFormat) throw Error(where + ": unknown format " + meta.at("format").dump());
      index.step = meta.at("step").get<std::int64_t>();
      index.metadata = meta.at("user");
      for (const auto& [file, entry] : j.at("files").items()) {
        if (file.empty() || file.find('/') != std::string::npos || file == "." || file == "..") {
          throw Error(where + " names the file '" + file + "', which is not a plain file name");
        }
        const auto crc = parse_hex32(entry.at("crc32").get<std::string>());
        if (!crc) throw Error(where + ": bad crc32 for " + file);
        index.files[file] = {entry.at("bytes").get<std::uint64_t>(), *crc};
      }
      for (const auto& [name, file] : j.at("weight_map").items()) {
        const std::string f = file.get<std::string>();
        if (!index.files.count(f)) {
          throw Error(where + " maps '" + name + "' to " + f + ", which it does not list");
        }
        index.weight_map[name] = f;
      }
    } catch (const json::exception& e) {
      throw Error(where + " is malformed: " + e.what());
    }
    for (const auto& [file, entry] : index.files) {
      const fs::path p = index.dir / file;
      std::error_code ec;
      const auto size = fs::file_size(p, ec);
      if (ec) throw Error("checkpoint shard " + p.string() + " is missing");
      if (size != entry.bytes) {
        throw Error("checkpoint shard " + p.string() + " has " + std::to_string(size) +
                    " bytes, the index says " + std::to_string(entry.bytes) + " (truncated or replaced)");
      }
    }
  });
  return index;
}

void load_checkpoint(comm::Communicator& world, const CheckpointIndex& index,
                     std::span<const CheckpointTensor> wanted) {
  std::map<std::string, SafetensorsFile> files;  // the files this rank needs, verified
  collectively(world, [&] {
    for (const CheckpointTensor& t : wanted) {
      const auto it = index.weight_map.find(t.name);
      if (it == index.weight_map.end()) {
        throw Error("checkpoint " + index.dir.string() + " has no tensor '" + t.name + "'");
      }
      const std::string& name = it->second;
      if (files.count(name)) continue;
      const fs::path p = index.dir / name;
      const std::vector<std::byte> bytes = read_whole_file(p);
      const CheckpointIndex::File& expected = index.files.at(name);
      if (bytes.size() != expected.bytes) {
        throw Error("checkpoint shard " + p.string() + " has " + std::to_string(bytes.size()) +
                    " bytes, the index says " + std::to_string(expected.bytes) + " (truncated or replaced)");
      }
      if (crc32_of(bytes) != expected.crc32) {
        throw Error("checkpoint shard " + p.string() + " fails its CRC-32 check (corrupted)");
      }
      SafetensorsFile file;
      try {
        file = parse_safetensors(bytes, p.string());
      } catch (const std::exception& e) {
        throw Error(e.what());
      }
      for (const auto& [tensor, in_file] : index.weight_map) {
        if (in_file == name && !file.tensors.count(tensor)) {
          throw Error("checkpoint index maps '" + tensor + "' to " + p.string() +
                      ", which does not contain it");
        }
      }
      for (const auto& [tensor, unused] : file.tensors) {
        const auto mapped = index.weight_map.find(tensor);
        if (mapped == index.weight_map.end() || mapped->second != name) {
          throw Error("checkpoint shard " + p.string() + " holds '" + tensor +
                      "', which the index does not map to it");
        }
      }
      const auto step = file.metadata.find("step");
      if (step != file.metadata.end() && step->second != std::to_string(index.step)) {
        throw Error("checkpoint shard " + p.string() + " is from step " + step->second +
                    ", the index from step " + std::to_string(index.step));
      }
      files.emplace(name, std::move(file));
    }
    for (const CheckpointTensor& t : wanted) {
      const Tensor& stored = files.at(index.weight_map.at(t.name)).tensors.at(t.name);
      if (stored.dtype != DType::f32) {
        throw Error("checkpoint tensor '" + t.name + "' is " + std::string(dtype_name(stored.dtype)) +
                    ", F32 expected");
      }
      if (stored.shape != t.shape) {
        throw Error("checkpoint tensor '" + t.name + "' has shape " + shape_text(stored.shape) +
                    ", the model expects " + shape_text(t.shape));
      }
      if (numel(t.shape) != static_cast<std::int64_t>(t.data.size())) {
        throw Error("load_checkpoint: destination of '" + t.name + "' has " +
                    std::to_string(t.data.size()) + " values for shape " + shape_text(t.shape));
      }
    }
  });
  // Everything verified on every rank: only now is caller state touched.
  for (const CheckpointTensor& t : wanted) {
    const auto values = files.at(index.weight_map.at(t.name)).tensors.at(t.name).f32();
    std::copy(values.begin(), values.end(), t.data.begin());
  }
}

}  // namespace moe
