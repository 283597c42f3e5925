// bfloat16 storage: the upper half of an IEEE float. The expert GEMMs of Compute::bf16 read
// operands in this format and accumulate in fp32; nothing does arithmetic on it directly.
#pragma once

#include <bit>
#include <cstdint>
#include <span>

namespace moe::experts {

// A distinct type (not a bare uint16_t) so that a bf16 buffer cannot be passed where integers or
// fp32 are expected.
enum class bf16 : std::uint16_t {};

// Round to nearest, ties to even (what oneDNN's and PyTorch's conversions do); NaN stays NaN.
inline bf16 to_bf16(float f) {
  const auto u = std::bit_cast<std::uint32_t>(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16(static_cast<std::uint16_t>((u >> 16) | 0x40u));
  return bf16(static_cast<std::uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16));
}

inline float to_float(bf16 b) {
  return std::bit_cast<float>(static_cast<std::uint32_t>(static_cast<std::uint16_t>(b)) << 16);
}

// out[i] = to_bf16(in[i]) / to_float(in[i]); the spans have the same size.
void convert(std::span<const float> in, std::span<bf16> out);
void convert(std::span<const bf16> in, std::span<float> out);

// Rows [0, rows) of a row-major [rows, cols] matrix with leading dimension ld_in, converted into
// a dense [rows, cols] bf16 matrix.
void convert_rows(std::int64_t rows, std::int64_t cols, const float* in, std::int64_t ld_in,
                  bf16* out);

}  // namespace moe::experts
