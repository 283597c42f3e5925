// How rows travel between ranks. fp32 is exact; bf16 halves the bytes of every exchange (compute
// stays fp32 on both sides) at a relative error bound of 1e-2 (SPEC.md section 9), and is used
// only when asked for.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string_view>

#include "experts/device/host_device.hpp"

namespace moe {

enum class WireFormat { fp32, bf16 };

std::optional<WireFormat> parse_wire_format(std::string_view name);
std::string_view to_string(WireFormat format);

constexpr std::size_t wire_value_bytes(WireFormat format) {
  return format == WireFormat::fp32 ? 4 : 2;
}

// fp32 to bf16 with round-to-nearest-even; NaN stays NaN. Host and device: the device layer's
// wire ops (runtime/device/permute_ops.hpp) round with this very function, so both layers send
// the same bits.
MOE_HOST_DEVICE inline std::uint16_t to_bf16(float value) {
  const std::uint32_t bits = std::bit_cast<std::uint32_t>(value);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((bits >> 16) | 0x40u);
  const std::uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<std::uint16_t>((bits + rounding) >> 16);
}

MOE_HOST_DEVICE inline float from_bf16(std::uint16_t value) {
  return std::bit_cast<float>(static_cast<std::uint32_t>(value) << 16);
}

// Writes n values as `format` at dst, and reads them back. Plain loops the compiler vectorizes.
void encode_values(const float* src, std::byte* dst, std::int64_t n, WireFormat format);
void decode_values(const std::byte* src, float* dst, std::int64_t n, WireFormat format);

}  // namespace moe
