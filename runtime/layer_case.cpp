#include "runtime/layer_case.hpp"

#include <algorithm>
#include <limits>
#include <numeric>
#include <set>

#include "experts/expert_shard.hpp"
#include "runtime/error.hpp"
#include "runtime/layer_tensors.hpp"

namespace moe {
namespace {

std::string shape_string(const std::vector<std::int64_t>& shape) {
  std::string out = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) out += ", ";
    out += std::to_string(shape[i]);
  }
  out += "]";
  return out;
}

std::vector<std::int64_t> parse_tokens_per_rank(const std::string& text) {
  std::vector<std::int64_t> counts;
  std::int64_t total = 0;
  std::size_t start = 0;
  while (true) {
    const std::size_t comma = text.find(',', start);
    const std::string item = text.substr(start, comma == std::string::npos ? comma : comma - start);
    const std::int64_t n = parse_int64("tokens_per_rank entry", item);
    if (n < 0) throw Error("tokens_per_rank entry " + std::to_string(n) + " is negative");
    // The sum sizes the input tensor and the row offsets: it must not overflow.
    if (n > std::numeric_limits<std::int64_t>::max() - total) {
      throw Error("tokens_per_rank sums to more than 2^63-1 tokens");
    }
    total += n;
    counts.push_back(n);
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return counts;
}

// The tensor `name` with dtype F32 and exactly `shape`, or a moe::Error saying what differs.
const Tensor& expect_f32(const SafetensorsFile& file, const std::string& name,
                         const std::vector<std::int64_t>& shape) {
  auto it = file.tensors.find(name);
  if (it == file.tensors.end()) throw Error("tensor '" + name + "' is missing");
  if (it->second.dtype != DType::f32) {
    throw Error("tensor '" + name + "' has dtype " + std::string(dtype_name(it->second.dtype)) +
                ", expected F32");
  }
  if (it->second.shape != shape) {
    throw Error("tensor '" + name + "' has shape " + shape_string(it->second.shape) +
                ", expected " + shape_string(shape));
  }
  return it->second;
}

std::string expert_tensor(std::int64_t e, std::string_view param) {
  return "experts." + std::to_string(e) + "." + std::string(param);
}

}  // namespace

std::int64_t LayerCase::total_tokens() const {
  return std::accumulate(tokens_per_rank.begin(), tokens_per_rank.end(), std::int64_t{0});
}

std::int64_t LayerCase::first_row(int rank) const {
  return std::accumulate(tokens_per_rank.begin(), tokens_per_rank.begin() + rank, std::int64_t{0});
}

LayerCase layer_case_from_file(SafetensorsFile file, const std::string& source_name) {
  try {
    LayerCase c;
    auto tokens = file.metadata.find("tokens_per_rank");
    if (tokens == file.metadata.end()) throw Error("metadata 'tokens_per_rank' is missing");
    c.tokens_per_rank = parse_tokens_per_rank(tokens->second);
    c.config.options_from_metadata(file.metadata, {"tokens_per_rank"});

    // Shapes come from the tensors: gate.weight is [E, d], experts.0.w1.weight is [h, d].
    auto gate = file.tensors.find("gate.weight");
    if (gate == file.tensors.end()) throw Error("tensor 'gate.weight' is missing");
    if (gate->second.shape.size() != 2) {
      throw Error("tensor 'gate.weight' has shape " + shape_string(gate->second.shape) +
                  ", expected [num_experts, d_model]");
    }
    c.config.num_experts = gate->second.shape[0];
    c.config.d_model = gate->second.shape[1];
    auto w1 = file.tensors.find("experts.0.w1.weight");
    if (w1 == file.tensors.end()) throw Error("tensor 'experts.0.w1.weight' is missing");
    if (w1->second.shape.size() != 2) {
      throw Error("tensor 'experts.0.w1.weight' has shape " + shape_string(w1->second.shape) +
                  ", expected [d_hidden, d_model]");
    }
    c.config.d_hidden = w1->second.shape[0];
    // A shared expert is there when its parameters are (SPEC.md section 5).
    auto shared = file.tensors.find(std::string(kSharedPrefix) + "w1.weight");
    if (shared != file.tensors.end()) {
      if (shared->second.shape.size() != 2 || shared->second.shape[0] < 1) {
        throw Error("tensor 'shared_expert.w1.weight' has shape " + shape_string(shared->second.shape) +
                    ", expected [d_shared_hidden, d_model]");
      }
      c.config.d_shared_hidden = shared->second.shape[0];
    }
    c.config.validate();

    const std::int64_t d = c.config.d_model;
    const std::int64_t total = c.total_tokens();
    std::set<std::string> expected = {"gate.weight", "input"};
    expect_f32(file, "gate.weight", {c.config.num_experts, d});
    expect_f32(file, "input", {total, d});
    if (file.tensors.count("grad_output")) {
      expect_f32(file, "grad_output", {total, d});
      expected.insert("grad_output");
    }
    experts::ExpertShard shapes(0, {d, c.config.d_hidden, c.config.activation});
    for (std::int64_t e = 0; e < c.config.num_experts; ++e) {
      for (std::string_view param : experts::expert_param_names(c.config.activation)) {
        const std::string name = expert_tensor(e, param);
        expect_f32(file, name, shapes.param_shape(param));
        expected.insert(name);
      }
    }
    if (c.config.has_shared_expert()) {
      experts::ExpertShard shared_shapes(0, {d, c.config.d_shared_hidden, c.config.activation});
      for (std::string_view param : experts::expert_param_names(c.config.activation)) {
        const std::string name = std::string(kSharedPrefix) + std::string(param);
        expect_f32(file, name, shared_shapes.param_shape(param));
        expected.insert(name);
      }
    }
    // The selection bias is optional (zeros when absent) and belongs to the sigmoid gate only.
    if (c.config.gate == GateKind::sigmoid && file.tensors.count(std::string(kSelectionBias))) {
      expect_f32(file, std::string(kSelectionBias), {c.config.num_experts});
      expected.insert(std::string(kSelectionBias));
    }
    // A tensor the layer has no use for means the case is not what its author thinks (for
    // example w3 with a non-gated activation): refuse it rather than ignore it.
    for (const auto& [name, tensor] : file.tensors) {
      if (!expected.count(name)) {
        throw Error("tensor '" + name + "' is not a parameter of this layer (gate " +
                    std::string(to_string(c.config.gate)) + ", activation " +
                    std::string(experts::to_string(c.config.activation)) + ", " +
                    std::to_string(c.config.num_experts) + " experts" +
                    (c.config.has_shared_expert() ? ", a shared expert" : ", no shared expert") + ")");
      }
    }
    c.file = std::move(file);
    return c;
  } catch (const Error& e) {
    throw Error(source_name + ": " + e.what());
  }
}

LayerCase read_layer_case(const std::filesystem::path& path) {
  try {
    return layer_case_from_file(read_safetensors(path), path.string());
  } catch (const FileError& e) {
    throw Error(e.what());
  }
}

SafetensorsFile make_layer_case_file(const MoeConfig& config,
                                     std::span<const std::int64_t> tokens_per_rank,
                                     std::map<std::string, Tensor> tensors) {
  SafetensorsFile file;
  file.tensors = std::move(tensors);
  file.metadata = config.options_to_metadata();
  std::string counts;
  for (std::size_t r = 0; r < tokens_per_rank.size(); ++r) {
    if (r > 0) counts += ",";
    counts += std::to_string(tokens_per_rank[r]);
  }
  file.metadata["tokens_per_rank"] = counts;
  return file;
}

void load_parameters(const LayerCase& layer_case, MoeLayer& layer) {
  const auto& tensors = layer_case.file.tensors;
  for (const LayerTensor& t : layer_parameters(layer)) {
    const auto values = tensors.at(t.name).f32();
    std::copy(values.begin(), values.end(), t.value.begin());
  }
  // The selection bias may be absent from a case: it stays zero (SPEC.md section 2).
  for (const LayerTensor& t : layer_buffers(layer)) {
    if (auto it = tensors.find(t.name); it != tensors.end()) {
      std::copy(it->second.f32().begin(), it->second.f32().end(), t.value.begin());
    }
  }
}

}  // namespace moe
