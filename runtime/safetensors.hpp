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
#include <string_view>
#include <vector>

namespace moe {

enum class DType { f32, f64, bf16, f16, i64, i32, u8 };

std::size_t dtype_size(DType dtype);
std::string_view dtype_name(DType dtype);  // "F32", "I64", ... as safetensors spells them

struct Tensor {
  DType dtype = DType::f32;
  std::vector<std::int64_t> shape;
  std::vector<std::byte> data;  // little-endian, row-major

  // Product of the dimensions (1 for a scalar, shape []). Throws std::invalid_argument for a
  // negative dimension or a product that does not fit in int64.
  std::int64_t numel() const;
  // Typed views; throw std::invalid_argument when the dtype differs or `data` does not hold
  // exactly numel() elements.
  std::span<const float> f32() const;
  std::span<float> f32();
  std::span<const std::int64_t> i64() const;
  std::span<std::int64_t> i64();

  // Copy `values` into a new tensor; throw std::invalid_argument when their count is not the
  // shape's numel().
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
// As the safetensors format requires, the tensors must cover the data section exactly: a gap
// between tensors or bytes after the last one are rejected too (they could hide a second file
// inside this one), and so are duplicate JSON keys and fields other than dtype/shape/data_offsets.
// A header above 100 MB is refused, as the reference implementation does.
// read_safetensors reads each tensor straight into its own buffer (no second copy of the file);
// parse_safetensors works on bytes already in memory. Both name `source_name` / the path in
// every message.
SafetensorsFile read_safetensors(const std::filesystem::path& path);
SafetensorsFile parse_safetensors(std::span<const std::byte> bytes, const std::string& source_name);

// Writes atomically: a temporary file beside `path`, fsync, rename, so a crash never leaves a
// half-written file under the final name. Throws FileError when the file cannot be written (the
// temporary file is removed and an existing file at `path` is left as it was).
// Both functions produce the same bytes, and the same bytes for the same content: tensors in
// name order, laid out back to back, the JSON header padded with spaces to a multiple of 8.
// They throw std::invalid_argument for content that cannot form a valid file: a tensor whose
// data size does not match its shape and dtype, a negative dimension, a tensor named
// "__metadata__", or a name or metadata string that is not valid UTF-8.
void write_safetensors(const std::filesystem::path& path, const SafetensorsFile& file);
std::vector<std::byte> serialize_safetensors(const SafetensorsFile& file);

}  // namespace moe
