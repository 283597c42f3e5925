// libFuzzer target for the safetensors reader: any input must either parse or be rejected with
// moe::FileError; every other exception, crash, leak or sanitizer report is a bug.
//
// Built by the "fuzz" preset (tests/fuzz/CMakeLists.txt: clang 14, ASan+UBSan) and run for a
// bounded time by tests/fuzz/run_fuzzers.sh, as CI does:
//   cmake --preset fuzz && cmake --build --preset fuzz && tests/fuzz/run_fuzzers.sh build-fuzz 30
// New inputs go to build-fuzz/fuzz-corpus/, so the seed corpus in the repository stays as it is;
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
