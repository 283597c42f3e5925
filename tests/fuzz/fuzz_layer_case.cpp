// libFuzzer target for the layer-case parser (runtime/layer_case.hpp), the input of moe-replay:
// bytes that parse as safetensors go through layer_case_from_file, which must either accept them
// or throw moe::Error. An accepted case must be one moe-replay can run without reading out of
// bounds: every rank's rows inside `input`, every parameter present with its shape. Any other
// exception, a crash or a sanitizer report is a bug.
//
// Built by the "fuzz" preset (tests/fuzz/CMakeLists.txt) and run by tests/fuzz/run_fuzzers.sh;
// the seed corpus corpus/layer_case/ is written by `bad_input_tool make-fuzz-seeds`.
#include <cstddef>
#include <cstdint>
#include <span>

#include "experts/expert_shard.hpp"
#include "runtime/error.hpp"
#include "runtime/layer_case.hpp"

namespace {

void require(bool condition) {
  if (!condition) __builtin_trap();
}

// What moe-replay relies on once a case is accepted.
void check_accepted(const moe::LayerCase& c) {
  const moe::MoeConfig& config = c.config;
  const auto& tensors = c.file.tensors;
  const std::int64_t total = c.total_tokens();
  require(total >= 0);
  require(c.first_row(static_cast<int>(c.tokens_per_rank.size())) == total);
  const std::int64_t d = config.d_model;
  require(tensors.at("input").f32().size() == static_cast<std::size_t>(total * d));
  require(tensors.at("gate.weight").f32().size() == static_cast<std::size_t>(config.num_experts * d));
  if (c.has_grad_output()) require(tensors.at("grad_output").f32().size() == static_cast<std::size_t>(total * d));
  const moe::experts::ExpertShard shapes(0, {d, config.d_hidden, config.activation});
  for (std::int64_t e = 0; e < config.num_experts; ++e) {
    for (std::string_view param : moe::experts::expert_param_names(config.activation)) {
      const auto& t = tensors.at("experts." + std::to_string(e) + "." + std::string(param));
      require(t.shape == shapes.param_shape(param));
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data), size);
  moe::SafetensorsFile file;
  try {
    file = moe::parse_safetensors(bytes, "fuzz input");
  } catch (const moe::FileError&) {
    return 0;  // the container's own fuzzer covers these
  }
  try {
    check_accepted(moe::layer_case_from_file(std::move(file), "fuzz input"));
  } catch (const moe::Error&) {
    // A refused case is the expected outcome for most inputs.
  }
  return 0;
}
