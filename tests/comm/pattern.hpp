// Payloads whose every byte says where it came from and where it was going: byte i of the block
// that rank `src` sends to rank `dst` is byte i % 8 of mix(src, dst, i / 8). A receiver recomputes
// the pattern and so verifies, byte for byte, what arrived from whom.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace moe::comm::test {

// splitmix64's finaliser: consecutive inputs give unrelated outputs.
inline std::uint64_t mix64(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// The 8 pattern bytes at word `word_idx` of the block src -> dst.
inline std::uint64_t pattern_word(int src, int dst, std::uint64_t word_idx) {
  const auto route = (static_cast<std::uint64_t>(static_cast<std::uint32_t>(src)) << 32) |
                     static_cast<std::uint32_t>(dst);
  return mix64(mix64(route) ^ word_idx);
}

// Writes the `bytes` pattern bytes of the block src -> dst to `out`.
inline void fill_block(std::byte* out, int src, int dst, std::size_t bytes) {
  const std::size_t words = bytes / 8;
  for (std::size_t w = 0; w < words; ++w) {
    const std::uint64_t value = pattern_word(src, dst, w);
    std::memcpy(out + 8 * w, &value, 8);
  }
  if (bytes % 8 != 0) {
    const std::uint64_t value = pattern_word(src, dst, words);
    std::memcpy(out + 8 * words, &value, bytes % 8);
  }
}

// Index of the first byte of `in` that is not the pattern of src -> dst, or `bytes` when all match.
inline std::size_t first_mismatch(const std::byte* in, int src, int dst, std::size_t bytes) {
  const std::size_t words = bytes / 8;
  for (std::size_t w = 0; w < words; ++w) {
    const std::uint64_t expected = pattern_word(src, dst, w);
    if (std::memcmp(in + 8 * w, &expected, 8) != 0) return 8 * w;
  }
  if (bytes % 8 != 0) {
    const std::uint64_t expected = pattern_word(src, dst, words);
    if (std::memcmp(in + 8 * words, &expected, bytes % 8) != 0) return 8 * words;
  }
  return bytes;
}

}  // namespace moe::comm::test
