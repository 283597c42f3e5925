// Writes the bad inputs the programs must refuse (tests/apps/bad_inputs.cmake runs them):
//
//   bad_input_tool make-bad-files DIR        hostile layer cases DIR/<name>.safetensors (each a
//                                            valid 2-rank case damaged in one way), and
//                                            DIR/existing_out.safetensors and DIR/existing.jsonl,
//                                            files a refused run must leave as they are (their
//                                            mtime is set far in the past, so any rewrite shows)
//   bad_input_tool make-fuzz-seeds DIR       tiny layer cases, valid and damaged: the seed corpus
//                                            of tests/fuzz/fuzz_layer_case.cpp (committed; rerun
//                                            after changing the case format)
//   bad_input_tool plant-shard STEP FILE SRC  replaces checkpoint shard STEP/FILE with SRC and
//                                            re-seals STEP's index (size, CRC-32, the index's own
//                                            checksum), so the damage gets past the checksums and
//                                            only the shard's parser can catch it
//   bad_input_tool old-mtime FILE            sets FILE's mtime far in the past
#include <zlib.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "runtime/layer_case.hpp"
#include "tests/support/case_bridge.hpp"

using namespace moe;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

using Bytes = std::vector<std::byte>;

void write_bytes(const fs::path& path, const Bytes& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  if (!out) throw std::runtime_error("cannot write " + path.string());
}

Bytes read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path.string());
  std::vector<char> chars((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  Bytes bytes(chars.size());
  std::memcpy(bytes.data(), chars.data(), chars.size());
  return bytes;
}

Bytes as_bytes(std::string_view text) {
  Bytes out(text.size());
  std::memcpy(out.data(), text.data(), text.size());
  return out;
}

// Ten years back: a run that rewrites the file, even within the same second, changes its mtime.
void set_old_mtime(const fs::path& path) {
  fs::last_write_time(path, fs::file_time_type::clock::now() - std::chrono::hours(24 * 365 * 10));
}

// A serialized file split into its JSON header and its data section, and put back together with
// any header text (so the header can be damaged in ways the writer refuses to produce).
struct Parts {
  std::string header;
  Bytes data;

  static Parts split(const Bytes& file) {
    std::uint64_t length = 0;
    for (int i = 7; i >= 0; --i) length = (length << 8) | std::to_integer<std::uint64_t>(file[static_cast<std::size_t>(i)]);
    Parts p;
    p.header.assign(reinterpret_cast<const char*>(file.data()) + 8, length);
    p.data.assign(file.begin() + 8 + static_cast<std::ptrdiff_t>(length), file.end());
    return p;
  }
  Bytes join(std::uint64_t length_field) const {
    Bytes out(8);
    for (int i = 0; i < 8; ++i) out[static_cast<std::size_t>(i)] = std::byte(length_field >> (8 * i) & 0xff);
    const Bytes h = as_bytes(header);
    out.insert(out.end(), h.begin(), h.end());
    out.insert(out.end(), data.begin(), data.end());
    return out;
  }
  Bytes join() const { return join(header.size()); }
  json parsed() const { return json::parse(header); }
};

// The base of every hostile file: the first standard 2-rank case (8 experts, d 12, h 20, gelu).
SafetensorsFile base_case() {
  return test::to_case_file(ref::make_case(test::standard_cases(2).front().spec));
}

void make_bad_files(const fs::path& dir) {
  fs::create_directories(dir);
  const SafetensorsFile base = base_case();
  const Bytes good = serialize_safetensors(base);
  const Parts parts = Parts::split(good);
  auto put = [&](const std::string& name, const Bytes& bytes) { write_bytes(dir / (name + ".safetensors"), bytes); };
  auto put_header = [&](const std::string& name, const json& header) {
    Parts p = parts;
    p.header = header.dump();
    put(name, p.join());
  };
  auto put_case = [&](const std::string& name, auto&& change) {
    SafetensorsFile f = base;
    change(f);
    put(name, serialize_safetensors(f));
  };

  // --- the container (runtime/safetensors.cpp) ---
  put("empty", {});
  put("truncated_header", Bytes(good.begin(), good.begin() + 200));
  put("truncated_data", Bytes(good.begin(), good.end() - 1000));
  {
    Parts p = parts;
    put("huge_header_length", p.join(std::uint64_t{1} << 63));
  }
  {
    // Deterministic noise over the middle of the header: not JSON any more.
    Parts p = parts;
    std::uint32_t state = 12345;
    for (std::size_t i = p.header.size() / 3; i < p.header.size() / 3 + 64; ++i) {
      state = state * 1664525u + 1013904223u;
      p.header[i] = static_cast<char>(0x20 + (state >> 24) % 0x5f);
    }
    put("garbled_header", p.join());
  }
  {
    json h = parts.parsed();
    h["input"]["data_offsets"][1] = h["input"]["data_offsets"][1].get<std::uint64_t>() + 4096;
    put_header("offsets_past_end", h);
  }
  {
    // gate.weight moved 4 bytes back into the tensor before it; its size stays right.
    json h = parts.parsed();
    auto& off = h["gate.weight"]["data_offsets"];
    off = {off[0].get<std::uint64_t>() - 4, off[1].get<std::uint64_t>() - 4};
    put_header("overlapping_tensors", h);
  }
  {
    json h = parts.parsed();
    h["input"]["dtype"] = "BOOL";
    put_header("unknown_dtype", h);
  }
  {
    json h = parts.parsed();
    h["input"]["shape"][0] = h["input"]["shape"][0].get<std::int64_t>() - 1;
    put_header("shape_size_mismatch", h);
  }
  {
    Parts p = parts;
    p.header.replace(p.header.find("\"input\""), 7, "\"in\xC0\xAFput\"");  // overlong '/'
    put("non_utf8_header", p.join());
  }
  {
    // 100000 nested arrays in a metadata value: refused by depth, not by a stack overflow.
    Parts p = parts;
    const std::string deep = std::string(100000, '[') + std::string(100000, ']');
    p.header.replace(p.header.find("\"__metadata__\":{") + 16, 0, "\"deep\":" + deep + ",");
    put("deeply_nested_json", p.join());
  }
  {
    Parts p = parts;
    p.header += std::string(8, '\0');  // the padding some writers get wrong
    put("nul_padded_header", p.join());
  }
  {
    json h = parts.parsed();
    h["__metadata__"]["top_k"] = 2;
    put_header("metadata_not_string", h);
  }

  // --- the layer case (runtime/layer_case.cpp, runtime/config.cpp) ---
  put_case("wrong_dtype", [](SafetensorsFile& f) {
    const Tensor& in = f.tensors.at("input");
    Tensor wide{DType::f64, in.shape, {}};
    for (float v : in.f32()) {
      const double d = v;
      const auto* b = reinterpret_cast<const std::byte*>(&d);
      wide.data.insert(wide.data.end(), b, b + sizeof d);
    }
    f.tensors["input"] = wide;
  });
  put_case("rows_not_tokens", [](SafetensorsFile& f) {
    // tokens_per_rank unchanged, one input row fewer.
    Tensor& in = f.tensors.at("input");
    in.shape[0] -= 1;
    in.data.resize(in.data.size() - static_cast<std::size_t>(in.shape[1]) * sizeof(float));
  });
  auto meta = [&](const std::string& name, const std::string& key, const char* value) {
    put_case(name, [&](SafetensorsFile& f) {
      if (value) f.metadata[key] = value; else f.metadata.erase(key);
    });
  };
  meta("missing_tokens", "tokens_per_rank", nullptr);
  meta("empty_tokens_entry", "tokens_per_rank", "37,,23");
  meta("overflowing_tokens", "tokens_per_rank", "9223372036854775807,9223372036854775807");
  meta("negative_top_k", "top_k", "-1");
  meta("negative_min_capacity", "min_capacity", "-2");
  meta("negative_aux_loss", "aux_loss_coef", "-0.5");
  meta("nan_capacity", "capacity_factor", "nan");
  meta("non_numeric_min_capacity", "min_capacity", "4x");
  meta("bad_bool", "normalize_topk", "yes");
  meta("bad_activation", "activation", "tanh");
  // SPEC version 2 keys, and keys no version knows (a case for another layer is never computed as
  // this one).
  meta("unknown_key", "expert_bias", "0.1");
  meta("bad_gate", "gate", "tanh");
  meta("n_group_not_divisor", "n_group", "3");
  meta("topk_group_zero", "topk_group", "0");
  meta("topk_group_too_many", "topk_group", "2");
  meta("zero_scaling", "routed_scaling_factor", "0");
  meta("bad_scope", "capacity_scope", "node");
  meta("bias_rate_with_softmax", "bias_update_rate", "0.01");
  put_case("bias_with_softmax", [](SafetensorsFile& f) {
    const std::vector<float> zeros(8, 0.0f);
    f.tensors["gate.e_score_correction_bias"] = Tensor::from_f32({8}, zeros);
  });
  put_case("bias_wrong_shape", [](SafetensorsFile& f) {
    f.metadata["gate"] = "sigmoid";
    const std::vector<float> zeros(7, 0.0f);
    f.tensors["gate.e_score_correction_bias"] = Tensor::from_f32({7}, zeros);
  });
  put_case("shared_expert_incomplete", [](SafetensorsFile& f) {
    f.tensors["shared_expert.w1.weight"] = f.tensors.at("experts.0.w1.weight");
  });

  // Files a refused run must not touch: a result (moe-replay --out) and a log (moe-train --json).
  write_safetensors(dir / "existing_out.safetensors", base);
  set_old_mtime(dir / "existing_out.safetensors");
  std::ofstream(dir / "existing.jsonl", std::ios::trunc) << "{\"type\":\"from an earlier run\"}\n";
  set_old_mtime(dir / "existing.jsonl");
}

SafetensorsFile safetensors_from(const Bytes& bytes) { return parse_safetensors(bytes, "seed"); }

// Tiny valid cases (E 2, d 2, h 2, 2 or 3 tokens) so the fuzzer mutates small, meaningful files.
void make_fuzz_seeds(const fs::path& dir) {
  fs::create_directories(dir);
  struct Seed {
    const char* name;
    const char* activation;
    std::vector<std::int64_t> tokens;
    bool grad;
  };
  for (const Seed& s : {Seed{"gelu_2ranks", "gelu", {1, 2}, true},
                        Seed{"swiglu_1rank", "swiglu", {3}, false},
                        Seed{"relu_empty_rank", "relu", {0, 2}, true}}) {
    ref::CaseSpec spec;
    spec.config.num_experts = 2;
    spec.config.d_model = 2;
    spec.config.d_hidden = 2;
    spec.config.top_k = 1;
    spec.config.activation = s.activation;
    spec.tokens_per_rank = s.tokens;
    spec.with_grad_output = s.grad;
    write_bytes(dir / s.name, serialize_safetensors(test::to_case_file(ref::make_case(spec))));
  }
  // And damaged copies of the first, one per kind of check of the parser.
  const SafetensorsFile base = safetensors_from(read_bytes(dir / "gelu_2ranks"));
  auto bad = [&](const char* name, auto&& change) {
    SafetensorsFile f = base;
    change(f);
    write_bytes(dir / name, serialize_safetensors(f));
  };
  bad("bad_top_k", [](SafetensorsFile& f) { f.metadata["top_k"] = "two"; });
  bad("bad_tokens", [](SafetensorsFile& f) { f.metadata["tokens_per_rank"] = "1,-2"; });
  bad("bad_tokens_sum", [](SafetensorsFile& f) { f.metadata["tokens_per_rank"] = "9223372036854775807,1"; });
  bad("bad_missing_expert", [](SafetensorsFile& f) { f.tensors.erase("experts.1.w2.bias"); });
  bad("bad_extra_tensor", [](SafetensorsFile& f) {
    f.tensors["experts.0.w3.weight"] = f.tensors.at("experts.0.w1.weight");
  });
  bad("bad_gate_rank", [](SafetensorsFile& f) { f.tensors.at("gate.weight").shape = {4}; });
}

std::string crc_text(const Bytes& bytes) {
  char text[9];
  std::snprintf(text, sizeof text, "%08x",
                static_cast<unsigned>(crc32_z(0L, reinterpret_cast<const Bytef*>(bytes.data()), bytes.size())));
  return text;
}

// Mirrors runtime/checkpoint.cpp's index checksum: CRC-32 of the canonical dump without it.
void plant_shard(const fs::path& step, const std::string& file, const fs::path& source) {
  const Bytes bytes = read_bytes(source);
  write_bytes(step / file, bytes);
  const fs::path index_path = step / "model.safetensors.index.json";
  json index = json::parse(std::ifstream(index_path));
  index["files"][file] = {{"bytes", bytes.size()}, {"crc32", crc_text(bytes)}};
  index.erase("checksum");
  index["checksum"] = "crc32:" + crc_text(as_bytes(index.dump()));
  std::ofstream(index_path, std::ios::trunc) << index.dump(2) << "\n";
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const std::string mode = argc > 1 ? argv[1] : "";
    if (mode == "make-bad-files" && argc == 3) return make_bad_files(argv[2]), 0;
    if (mode == "make-fuzz-seeds" && argc == 3) return make_fuzz_seeds(argv[2]), 0;
    if (mode == "plant-shard" && argc == 5) return plant_shard(argv[2], argv[3], argv[4]), 0;
    if (mode == "old-mtime" && argc == 3) return set_old_mtime(argv[2]), 0;
    std::cerr << "usage: bad_input_tool make-bad-files DIR | make-fuzz-seeds DIR | "
                 "plant-shard STEP FILE SRC | old-mtime FILE\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "bad_input_tool: " << e.what() << "\n";
    return 1;
  }
}
