#include "runtime/wire_format.hpp"

namespace moe {

std::optional<WireFormat> parse_wire_format(std::string_view name) {
  if (name == "fp32") return WireFormat::fp32;
  if (name == "bf16") return WireFormat::bf16;
  return std::nullopt;
}

std::string_view to_string(WireFormat format) { return format == WireFormat::fp32 ? "fp32" : "bf16"; }

void encode_values(const float* src, std::byte* dst, std::int64_t n, WireFormat format) {
  // An empty block may come with null pointers (an empty vector's data()), and memcpy with a null
  // pointer is undefined even for 0 bytes (UBSan reports it).
  if (n == 0) return;
  if (format == WireFormat::fp32) {
    std::memcpy(dst, src, static_cast<std::size_t>(n) * sizeof(float));
    return;
  }
  for (std::int64_t i = 0; i < n; ++i) {
    const std::uint16_t v = to_bf16(src[i]);
    std::memcpy(dst + 2 * i, &v, 2);
  }
}

void decode_values(const std::byte* src, float* dst, std::int64_t n, WireFormat format) {
  if (n == 0) return;  // see encode_values
  if (format == WireFormat::fp32) {
    std::memcpy(dst, src, static_cast<std::size_t>(n) * sizeof(float));
    return;
  }
  for (std::int64_t i = 0; i < n; ++i) {
    std::uint16_t v;
    std::memcpy(&v, src + 2 * i, 2);
    dst[i] = from_bf16(v);
  }
}

}  // namespace moe
