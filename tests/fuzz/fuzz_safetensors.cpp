// libFuzzer target for the safetensors reader: any input must either parse or be rejected with
// moe::FileError; every other exception, crash, leak or sanitizer report is a bug.
//
// Build and run from the repository root (clang 14 with libFuzzer; nlohmann-json is
// header-only):
//   clang++-14 -std=c++20 -g -O1 -fsanitize=fuzzer,address,undefined \
//     -fno-sanitize-recover=undefined -I. runtime/safetensors.cpp tests/fuzz/fuzz_safetensors.cpp \
//     -o fuzz_safetensors
//   mkdir -p /tmp/st_corpus
//   ./fuzz_safetensors -max_total_time=60 -max_len=4096 -dict=tests/fuzz/safetensors.dict \
//     /tmp/st_corpus tests/fuzz/corpus/safetensors
// New inputs go to the first directory, so the seed corpus in the repository stays as it is;
// tests/fuzz/make_safetensors_corpus.py regenerates that seed corpus.
#include <cstddef>
#include <cstdint>
#include <span>

#include "runtime/safetensors.hpp"

namespace {

// A file that parsed must serialize, and parse back to the same content.
void check_round_trip(const moe::SafetensorsFile& file) {
  const auto bytes = moe::serialize_safetensors(file);
  const auto again = moe::parse_safetensors(bytes, "round trip");
  if (again.metadata != file.metadata || again.tensors.size() != file.tensors.size()) {
    __builtin_trap();
  }
  for (const auto& [name, tensor] : file.tensors) {
    const auto it = again.tensors.find(name);
    if (it == again.tensors.end() || it->second.dtype != tensor.dtype ||
        it->second.shape != tensor.shape || it->second.data != tensor.data) {
      __builtin_trap();
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data), size);
  try {
    check_round_trip(moe::parse_safetensors(bytes, "fuzz input"));
  } catch (const moe::FileError&) {
    // A rejected input is the expected outcome for most inputs.
  }
  return 0;
}
