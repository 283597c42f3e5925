// Reading and writing safetensors files: an 8-byte little-endian header length, a JSON header
// mapping tensor names to {dtype, shape, data_offsets} (plus an optional "__metadata__"
// string-to-string map), then the raw little-endian tensor data.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

namespace moe {

enum class DType { f32, f64, bf16, f16, i64, i32, u8 };

std::size_t dtype_size(DType dtype);
std::string_view dtype_name(DType dtype);  // "F32", "I64", ... as safetensors spells them

struct Tensor {
  DType dtype = DType::f32;
  std::vector<std::int64_t> shape;
  std::vector<std::byte> data;  // little-endian, row-major

  std::int64_t numel() const;
  // Typed views; throw std::invalid_argument when the dtype differs.
  std::span<const float> f32() const;
  std::span<float> f32();
  std::span<const std::int64_t> i64() const;
  std::span<std::int64_t> i64();

  static Tensor from_f32(std::vector<std::int64_t> shape, std::span<const float> values);
  static Tensor from_i64(std::vector<std::int64_t> shape, std::span<const std::int64_t> values);
};

struct SafetensorsFile {
  std::map<std::string, Tensor> tensors;
  std::map<std::string, std::string> metadata;
};

// A file that is missing, truncated or malformed. The message names the file and the problem.
class FileError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Parses and validates the whole file: header length within the file, well-formed UTF-8 JSON of
// bounded nesting, known dtypes, non-negative shapes whose byte size matches data_offsets,
// offsets inside the data section, no two tensors overlapping. Throws FileError otherwise.
SafetensorsFile read_safetensors(const std::filesystem::path& path);
SafetensorsFile parse_safetensors(std::span<const std::byte> bytes, const std::string& source_name);

// Writes atomically: a temporary file beside `path`, fsync, rename, so a crash never leaves a
// half-written file under the final name.
void write_safetensors(const std::filesystem::path& path, const SafetensorsFile& file);
std::vector<std::byte> serialize_safetensors(const SafetensorsFile& file);

}  // namespace moe
