#include "runtime/safetensors.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <cerrno>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <tuple>
#include <type_traits>
#include <utility>

namespace moe {

// Tensor bytes are stored and viewed as they are on disk: no byte swapping anywhere.
static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian; this code maps it without swapping");

namespace {

using json = nlohmann::json;

constexpr std::size_t kLengthFieldBytes = 8;
// The reference implementation refuses headers above 100 MB so that a hostile file cannot make
// the JSON parser allocate without bound; no real file comes close.
constexpr std::uint64_t kMaxHeaderBytes = 100'000'000;
// A valid header nests three deep (header object, tensor entry, shape array). The bound leaves
// room so that a misplaced container gets the precise "wrong type" message, while keeping
// hostile nesting far from any stack or memory limit.
constexpr int kMaxJsonDepth = 8;
// read(2) and write(2) transfer at most ~2 GiB per call on Linux.
constexpr std::size_t kMaxIoChunk = std::size_t{1} << 30;

struct DTypeInfo {
  DType dtype;
  std::string_view name;
  std::size_t size;
};

constexpr std::array<DTypeInfo, 7> kDTypes{{
    {DType::f32, "F32", 4},
    {DType::f64, "F64", 8},
    {DType::bf16, "BF16", 2},
    {DType::f16, "F16", 2},
    {DType::i64, "I64", 8},
    {DType::i32, "I32", 4},
    {DType::u8, "U8", 1},
}};

const DTypeInfo& dtype_info(DType dtype) {
  for (const auto& info : kDTypes) {
    if (info.dtype == dtype) return info;
  }
  throw std::invalid_argument("invalid DType value " + std::to_string(static_cast<int>(dtype)));
}

std::optional<DType> parse_dtype(std::string_view name) {
  for (const auto& info : kDTypes) {
    if (info.name == name) return info.dtype;
  }
  return std::nullopt;
}

std::optional<std::uint64_t> checked_mul(std::uint64_t a, std::uint64_t b) {
  if (a != 0 && b > std::numeric_limits<std::uint64_t>::max() / a) return std::nullopt;
  return a * b;
}

// Element count of a shape, or nullopt when a dimension is negative or the byte size of the
// tensor (count × element size) does not fit in int64. A zero dimension makes the count 0 even
// when the other dimensions are huge, so the product is checked only when no dimension is 0.
std::optional<std::uint64_t> checked_numel(std::span<const std::int64_t> shape,
                                           std::size_t element_size) {
  constexpr auto kLimit = static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());
  bool any_zero = false;
  for (const auto dim : shape) {
    if (dim < 0) return std::nullopt;
    any_zero = any_zero || dim == 0;
  }
  if (any_zero) return 0;
  std::uint64_t bytes = element_size;
  for (const auto dim : shape) {
    const auto next = checked_mul(bytes, static_cast<std::uint64_t>(dim));
    if (!next || *next > kLimit) return std::nullopt;
    bytes = *next;
  }
  return bytes / element_size;
}

std::string shape_string(std::span<const std::int64_t> shape) {
  std::string out = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) out += ", ";
    out += std::to_string(shape[i]);
  }
  return out + "]";
}

[[noreturn]] void fail(const std::string& source, const std::string& problem) {
  throw FileError(source + ": " + problem);
}

std::string in_quotes(const std::string& name) { return "'" + name + "'"; }

std::uint64_t load_u64_le(const std::byte* p) {
  std::uint64_t value = 0;
  std::memcpy(&value, p, sizeof(value));
  return value;
}

// Returns the offset of the first byte that breaks UTF-8 (overlong forms, surrogates and code
// points above U+10FFFF included), or nullopt when the whole text is valid.
std::optional<std::size_t> find_invalid_utf8(std::span<const std::byte> text) {
  std::size_t i = 0;
  while (i < text.size()) {
    const auto lead = std::to_integer<unsigned>(text[i]);
    std::size_t length = 0;
    unsigned second_lo = 0x80;
    unsigned second_hi = 0xBF;
    if (lead < 0x80) {
      length = 1;
    } else if (lead >= 0xC2 && lead <= 0xDF) {
      length = 2;
    } else if (lead >= 0xE0 && lead <= 0xEF) {
      length = 3;
      if (lead == 0xE0) second_lo = 0xA0;  // overlong
      if (lead == 0xED) second_hi = 0x9F;  // UTF-16 surrogates
    } else if (lead >= 0xF0 && lead <= 0xF4) {
      length = 4;
      if (lead == 0xF0) second_lo = 0x90;  // overlong
      if (lead == 0xF4) second_hi = 0x8F;  // above U+10FFFF
    } else {
      return i;
    }
    if (text.size() - i < length) return i;
    for (std::size_t k = 1; k < length; ++k) {
      const auto byte = std::to_integer<unsigned>(text[i + k]);
      const unsigned lo = k == 1 ? second_lo : 0x80;
      const unsigned hi = k == 1 ? second_hi : 0xBF;
      if (byte < lo || byte > hi) return i;
    }
    i += length;
  }
  return std::nullopt;
}

// Where one tensor's bytes sit in the data section (offsets relative to its start).
struct TensorLayout {
  std::string name;
  DType dtype = DType::u8;
  std::vector<std::int64_t> shape;
  std::uint64_t begin = 0;
  std::uint64_t end = 0;
};

struct HeaderLayout {
  std::vector<TensorLayout> tensors;
  std::map<std::string, std::string> metadata;
};

// Checks the header length field against the file size before anything is allocated for the
// header, so a hostile length such as 2^63 fails here.
std::uint64_t checked_header_length(std::uint64_t file_size, const std::byte* length_field,
                                    const std::string& source) {
  const std::uint64_t header_length = load_u64_le(length_field);
  const std::uint64_t available = file_size - kLengthFieldBytes;
  if (header_length > available) {
    fail(source, "header length " + std::to_string(header_length) + " is larger than the " +
                     std::to_string(available) + " bytes that follow the length field");
  }
  if (header_length > kMaxHeaderBytes) {
    fail(source, "header length " + std::to_string(header_length) + " exceeds the limit of " +
                     std::to_string(kMaxHeaderBytes) + " bytes");
  }
  return header_length;
}

void check_file_size(std::uint64_t file_size, const std::string& source) {
  if (file_size < kLengthFieldBytes) {
    fail(source, "file is " + std::to_string(file_size) +
                     " bytes, shorter than the 8-byte header length field");
  }
}

json parse_header_json(std::span<const std::byte> header, const std::string& source) {
  if (const auto bad = find_invalid_utf8(header)) {
    fail(source, "header is not valid UTF-8 (byte " + std::to_string(*bad) + " of the header)");
  }
  // nlohmann's lexer takes a NUL byte for the end of input and would silently ignore whatever
  // follows it. Valid JSON never holds a raw NUL (inside strings it must be escaped), so any NUL
  // is an error; NUL padding in particular is a known writer bug that strict readers refuse.
  const auto nul = std::find(header.begin(), header.end(), std::byte{0});
  if (nul != header.end()) {
    fail(source, "header is not valid JSON: NUL byte at byte " +
                     std::to_string(nul - header.begin()) + " of the header");
  }
  // The format requires the header to start with '{' (padding may only trail).
  if (header.empty() || header[0] != std::byte{'{'}) {
    fail(source, "header is not a JSON object (it must start with '{')");
  }
  // nlohmann's parser is iterative, but the callback still bounds the depth so that the DOM it
  // builds (and destroys) stays shallow, and rejects duplicate keys, which the format forbids
  // and which the parser would otherwise resolve silently (a hidden second entry).
  std::vector<std::set<std::string>> open_objects;
  const auto callback = [&](int depth, json::parse_event_t event, json& parsed) {
    using event_t = json::parse_event_t;
    if (event == event_t::object_start || event == event_t::array_start) {
      if (depth >= kMaxJsonDepth) {
        fail(source,
             "header JSON is nested deeper than " + std::to_string(kMaxJsonDepth) + " levels");
      }
    }
    if (event == event_t::object_start) open_objects.emplace_back();
    if (event == event_t::object_end) open_objects.pop_back();
    if (event == event_t::key) {
      auto key = parsed.get<std::string>();
      if (!open_objects.back().insert(key).second) {
        fail(source, "header JSON has the key " + in_quotes(key) + " twice in one object");
      }
    }
    return true;
  };
  const std::string_view text(reinterpret_cast<const char*>(header.data()), header.size());
  try {
    return json::parse(text, callback);
  } catch (const json::exception& e) {
    fail(source, std::string("header is not valid JSON: ") + e.what());
  }
}

std::uint64_t integer_field(const json& value, const std::string& what, const std::string& source) {
  if (!value.is_number_integer()) {
    fail(source, what + " is not an integer (got " + value.dump() + ")");
  }
  if (!value.is_number_unsigned() && value.get<std::int64_t>() < 0) {
    fail(source, what + " is negative (" + value.dump() + ")");
  }
  return value.get<std::uint64_t>();
}

TensorLayout parse_tensor_entry(const std::string& name, const json& entry, std::uint64_t data_size,
                                const std::string& source) {
  const std::string where = "tensor " + in_quotes(name);
  if (!entry.is_object()) fail(source, where + " is not a JSON object");
  for (const auto& [key, unused] : entry.items()) {
    if (key != "dtype" && key != "shape" && key != "data_offsets") {
      fail(source, where + " has an unknown field " + in_quotes(key));
    }
  }
  for (const char* field : {"dtype", "shape", "data_offsets"}) {
    if (!entry.contains(field)) fail(source, where + " is missing \"" + field + "\"");
  }

  TensorLayout layout;
  layout.name = name;

  const json& dtype = entry.at("dtype");
  if (!dtype.is_string()) fail(source, where + ": dtype is not a string");
  const auto parsed_dtype = parse_dtype(dtype.get_ref<const std::string&>());
  if (!parsed_dtype) {
    fail(source, where + " has an unsupported dtype " + dtype.dump() +
                     " (supported: F32, F64, BF16, F16, I64, I32, U8)");
  }
  layout.dtype = *parsed_dtype;

  const json& shape = entry.at("shape");
  if (!shape.is_array()) fail(source, where + ": shape is not an array");
  for (const auto& dim : shape) {
    const auto value = integer_field(dim, where + ": shape dimension", source);
    if (value > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
      fail(source, where + ": shape dimension " + std::to_string(value) + " is too large");
    }
    layout.shape.push_back(static_cast<std::int64_t>(value));
  }
  const std::size_t element_size = dtype_info(layout.dtype).size;
  const auto numel = checked_numel(layout.shape, element_size);
  if (!numel) {
    fail(source, where + ": the byte size of shape " + shape_string(layout.shape) + " overflows");
  }

  const json& offsets = entry.at("data_offsets");
  if (!offsets.is_array() || offsets.size() != 2) {
    fail(source, where + ": data_offsets is not an array [begin, end]");
  }
  layout.begin = integer_field(offsets[0], where + ": data_offsets begin", source);
  layout.end = integer_field(offsets[1], where + ": data_offsets end", source);
  const std::string range =
      "[" + std::to_string(layout.begin) + ", " + std::to_string(layout.end) + "]";
  if (layout.begin > layout.end) {
    fail(source, where + ": data_offsets " + range + " has begin > end");
  }
  if (layout.end > data_size) {
    fail(source, where + ": data_offsets " + range + " end is beyond the data section of " +
                     std::to_string(data_size) + " bytes");
  }
  const std::uint64_t expected = *numel * element_size;
  if (layout.end - layout.begin != expected) {
    fail(source, where + ": data_offsets " + range + " hold " +
                     std::to_string(layout.end - layout.begin) + " bytes, but shape " +
                     shape_string(layout.shape) + " of " + std::string(dtype_name(layout.dtype)) +
                     " needs " + std::to_string(expected));
  }
  return layout;
}

std::map<std::string, std::string> parse_metadata(const json& value, const std::string& source) {
  if (!value.is_object()) fail(source, "__metadata__ is not a string-to-string object");
  std::map<std::string, std::string> metadata;
  for (const auto& [key, item] : value.items()) {
    if (!item.is_string()) {
      fail(source, "__metadata__ is not a string-to-string object: the value of " + in_quotes(key) +
                       " is " + item.dump());
    }
    metadata.emplace(key, item.get<std::string>());
  }
  return metadata;
}

// The format requires the tensors to index the whole data section with no holes, so that no
// unreferenced bytes can smuggle a second file format into this one (a "polyglot"). Together
// with the per-tensor checks this also rules out overlaps: sorted by offsets, each tensor must
// begin exactly where the previous one ended.
void check_coverage(std::vector<TensorLayout>& tensors, std::uint64_t data_size,
                    const std::string& source) {
  std::sort(tensors.begin(), tensors.end(), [](const TensorLayout& a, const TensorLayout& b) {
    return std::tie(a.begin, a.end, a.name) < std::tie(b.begin, b.end, b.name);
  });
  std::uint64_t cursor = 0;
  const TensorLayout* cursor_owner = nullptr;  // the tensor whose bytes end at `cursor`
  for (const auto& tensor : tensors) {
    if (tensor.begin < cursor) {
      fail(source,
           "tensors " + in_quotes(cursor_owner->name) + " [" + std::to_string(cursor_owner->begin) +
               ", " + std::to_string(cursor_owner->end) + "] and " + in_quotes(tensor.name) + " [" +
               std::to_string(tensor.begin) + ", " + std::to_string(tensor.end) + "] overlap");
    }
    if (tensor.begin > cursor) {
      fail(source, "data section has a hole: bytes [" + std::to_string(cursor) + ", " +
                       std::to_string(tensor.begin) + ") belong to no tensor");
    }
    if (tensor.end > cursor) {
      cursor = tensor.end;
      cursor_owner = &tensor;
    }
  }
  if (cursor != data_size) {
    fail(source, "data section has " + std::to_string(data_size - cursor) +
                     " trailing bytes that belong to no tensor");
  }
}

HeaderLayout parse_header(std::span<const std::byte> header, std::uint64_t data_size,
                          const std::string& source) {
  const json root = parse_header_json(header, source);
  if (!root.is_object()) fail(source, "header is not a JSON object");
  HeaderLayout layout;
  for (const auto& [key, value] : root.items()) {
    if (key == "__metadata__") {
      layout.metadata = parse_metadata(value, source);
    } else {
      layout.tensors.push_back(parse_tensor_entry(key, value, data_size, source));
    }
  }
  check_coverage(layout.tensors, data_size, source);
  return layout;
}

// ---------------------------------------------------------------------------------------------
// Writing

// Serialized header: the 8-byte length field followed by the padded JSON.
std::string build_header(const SafetensorsFile& file) {
  json root = json::object();
  std::uint64_t offset = 0;
  for (const auto& [name, tensor] : file.tensors) {
    if (name == "__metadata__") {
      throw std::invalid_argument("a tensor cannot be named \"__metadata__\"");
    }
    const std::size_t element_size = dtype_info(tensor.dtype).size;
    const auto numel = checked_numel(tensor.shape, element_size);
    if (!numel) {
      throw std::invalid_argument("tensor '" + name + "' has an invalid shape " +
                                  shape_string(tensor.shape));
    }
    if (tensor.data.size() != *numel * element_size) {
      throw std::invalid_argument("tensor '" + name + "' holds " +
                                  std::to_string(tensor.data.size()) + " bytes, but shape " +
                                  shape_string(tensor.shape) + " of " +
                                  std::string(dtype_name(tensor.dtype)) + " needs " +
                                  std::to_string(*numel * element_size));
    }
    const std::uint64_t end = offset + tensor.data.size();
    root[name] = {{"dtype", dtype_name(tensor.dtype)},
                  {"shape", tensor.shape},
                  {"data_offsets", {offset, end}}};
    offset = end;
  }
  if (!file.metadata.empty()) root["__metadata__"] = file.metadata;

  std::string text;
  try {
    // json objects keep their keys sorted, so the same content always gives the same bytes.
    text = root.dump();
  } catch (const json::type_error& e) {
    throw std::invalid_argument(std::string("tensor name or metadata is not valid UTF-8: ") +
                                e.what());
  }
  // Padding the header to a multiple of 8 keeps the data section 8-byte aligned in the file.
  text.append((8 - text.size() % 8) % 8, ' ');
  std::string out(kLengthFieldBytes, '\0');
  const std::uint64_t length = text.size();
  std::memcpy(out.data(), &length, sizeof(length));
  return out + text;
}

std::string errno_text(int error) { return std::strerror(error); }

class UniqueFd {
 public:
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const { return fd_; }
  // Closes now and reports the result: on some file systems a failed close is the first sign
  // that buffered data was not written.
  int close() {
    const int result = ::close(fd_);
    fd_ = -1;
    return result;
  }

 private:
  int fd_;
};

// Returns 0 or the errno of the failing write.
int write_all(int fd, const void* data, std::size_t size) {
  const auto* p = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t written = ::write(fd, p, std::min(size, kMaxIoChunk));
    if (written < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    p += written;
    size -= static_cast<std::size_t>(written);
  }
  return 0;
}

// Reads exactly `size` bytes at `offset`; a short read means the file shrank after fstat.
void read_exact(int fd, void* data, std::size_t size, std::uint64_t offset,
                const std::string& source) {
  auto* p = static_cast<char*>(data);
  while (size > 0) {
    const ssize_t got = ::pread(fd, p, std::min(size, kMaxIoChunk), static_cast<off_t>(offset));
    if (got < 0) {
      if (errno == EINTR) continue;
      fail(source, "cannot read: " + errno_text(errno));
    }
    if (got == 0) fail(source, "file ended early (was it truncated while being read?)");
    p += got;
    size -= static_cast<std::size_t>(got);
    offset += static_cast<std::uint64_t>(got);
  }
}

std::filesystem::path temp_path_for(const std::filesystem::path& path) {
  // Unique per process and call, so concurrent writers of the same target never share a
  // temporary file; hidden and beside the target, so rename stays within one file system.
  static std::atomic<std::uint64_t> counter{0};
  const std::string name = "." + path.filename().string() + ".tmp." + std::to_string(::getpid()) +
                           "." + std::to_string(counter.fetch_add(1));
  return path.parent_path() / name;
}

}  // namespace

std::size_t dtype_size(DType dtype) { return dtype_info(dtype).size; }

std::string_view dtype_name(DType dtype) { return dtype_info(dtype).name; }

// ---------------------------------------------------------------------------------------------
// Tensor

std::int64_t Tensor::numel() const {
  const auto count = checked_numel(shape, 1);
  if (!count) throw std::invalid_argument("invalid tensor shape " + shape_string(shape));
  return static_cast<std::int64_t>(*count);
}

namespace {

template <typename T>
std::span<T> typed_view(std::conditional_t<std::is_const_v<T>, const Tensor&, Tensor&> tensor,
                        DType expected) {
  if (tensor.dtype != expected) {
    throw std::invalid_argument("tensor has dtype " + std::string(dtype_name(tensor.dtype)) +
                                ", not " + std::string(dtype_name(expected)));
  }
  const auto count = static_cast<std::size_t>(tensor.numel());
  if (tensor.data.size() != count * sizeof(T)) {
    throw std::invalid_argument("tensor of shape " + shape_string(tensor.shape) + " holds " +
                                std::to_string(tensor.data.size()) + " bytes, not " +
                                std::to_string(count * sizeof(T)));
  }
  // std::vector's storage comes from operator new, aligned for any fundamental type.
  return {reinterpret_cast<T*>(tensor.data.data()), count};
}

template <typename T>
Tensor make_tensor(DType dtype, std::vector<std::int64_t> shape, std::span<const T> values) {
  Tensor tensor;
  tensor.dtype = dtype;
  tensor.shape = std::move(shape);
  const auto count = checked_numel(tensor.shape, sizeof(T));
  if (!count || *count != values.size()) {
    throw std::invalid_argument("shape " + shape_string(tensor.shape) + " does not hold " +
                                std::to_string(values.size()) + " values");
  }
  tensor.data.resize(values.size_bytes());
  if (!values.empty()) std::memcpy(tensor.data.data(), values.data(), values.size_bytes());
  return tensor;
}

}  // namespace

std::span<const float> Tensor::f32() const { return typed_view<const float>(*this, DType::f32); }
std::span<float> Tensor::f32() { return typed_view<float>(*this, DType::f32); }
std::span<const std::int64_t> Tensor::i64() const {
  return typed_view<const std::int64_t>(*this, DType::i64);
}
std::span<std::int64_t> Tensor::i64() { return typed_view<std::int64_t>(*this, DType::i64); }

Tensor Tensor::from_f32(std::vector<std::int64_t> shape, std::span<const float> values) {
  return make_tensor(DType::f32, std::move(shape), values);
}

Tensor Tensor::from_i64(std::vector<std::int64_t> shape, std::span<const std::int64_t> values) {
  return make_tensor(DType::i64, std::move(shape), values);
}

// ---------------------------------------------------------------------------------------------
// Reading

SafetensorsFile parse_safetensors(std::span<const std::byte> bytes,
                                  const std::string& source_name) {
  check_file_size(bytes.size(), source_name);
  const std::uint64_t header_length =
      checked_header_length(bytes.size(), bytes.data(), source_name);
  const auto header = bytes.subspan(kLengthFieldBytes, header_length);
  const auto data = bytes.subspan(kLengthFieldBytes + header_length);
  HeaderLayout layout = parse_header(header, data.size(), source_name);

  SafetensorsFile file;
  file.metadata = std::move(layout.metadata);
  for (auto& entry : layout.tensors) {
    Tensor tensor;
    tensor.dtype = entry.dtype;
    tensor.shape = std::move(entry.shape);
    const auto slice = data.subspan(entry.begin, entry.end - entry.begin);
    tensor.data.assign(slice.begin(), slice.end());
    file.tensors.emplace(std::move(entry.name), std::move(tensor));
  }
  return file;
}

SafetensorsFile read_safetensors(const std::filesystem::path& path) {
  const std::string source = path.string();
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) fail(source, "cannot open: " + errno_text(errno));
  struct stat info {};
  if (::fstat(fd.get(), &info) != 0) fail(source, "cannot stat: " + errno_text(errno));
  if (!S_ISREG(info.st_mode)) fail(source, "not a regular file");
  const auto file_size = static_cast<std::uint64_t>(info.st_size);

  check_file_size(file_size, source);
  std::array<std::byte, kLengthFieldBytes> length_field{};
  read_exact(fd.get(), length_field.data(), length_field.size(), 0, source);
  const std::uint64_t header_length = checked_header_length(file_size, length_field.data(), source);
  std::vector<std::byte> header(header_length);
  read_exact(fd.get(), header.data(), header.size(), kLengthFieldBytes, source);
  const std::uint64_t data_start = kLengthFieldBytes + header_length;
  HeaderLayout layout = parse_header(header, file_size - data_start, source);

  // Each tensor is read in one call straight into its own buffer, so a large file costs one
  // copy of its data in memory, not two.
  SafetensorsFile file;
  file.metadata = std::move(layout.metadata);
  for (auto& entry : layout.tensors) {
    Tensor tensor;
    tensor.dtype = entry.dtype;
    tensor.shape = std::move(entry.shape);
    tensor.data.resize(entry.end - entry.begin);
    read_exact(fd.get(), tensor.data.data(), tensor.data.size(), data_start + entry.begin, source);
    file.tensors.emplace(std::move(entry.name), std::move(tensor));
  }
  return file;
}

// ---------------------------------------------------------------------------------------------
// Writing

std::vector<std::byte> serialize_safetensors(const SafetensorsFile& file) {
  const std::string header = build_header(file);
  std::size_t total = header.size();
  for (const auto& [name, tensor] : file.tensors) total += tensor.data.size();
  std::vector<std::byte> out;
  out.reserve(total);
  const auto* header_bytes = reinterpret_cast<const std::byte*>(header.data());
  out.insert(out.end(), header_bytes, header_bytes + header.size());
  for (const auto& [name, tensor] : file.tensors) {
    out.insert(out.end(), tensor.data.begin(), tensor.data.end());
  }
  return out;
}

void write_safetensors(const std::filesystem::path& path, const SafetensorsFile& file) {
  const std::string target = path.string();
  if (!path.has_filename()) fail(target, "cannot write: the path does not name a file");
  // Validate the content before touching the disk.
  const std::string header = build_header(file);

  const std::filesystem::path temp = temp_path_for(path);
  UniqueFd fd(::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666));
  if (fd.get() < 0) {
    const int error = errno;
    fail(target, "cannot create temporary file " + temp.string() + ": " + errno_text(error));
  }
  // Called only on failure: removes the temporary file, then throws.
  const auto abandon = [&](const std::string& step, int error) {
    if (fd.get() >= 0) fd.close();
    ::unlink(temp.c_str());
    fail(target, "cannot write (" + step + "): " + errno_text(error));
  };

  if (const int error = write_all(fd.get(), header.data(), header.size())) {
    abandon("writing the header", error);
  }
  for (const auto& [name, tensor] : file.tensors) {
    if (const int error = write_all(fd.get(), tensor.data.data(), tensor.data.size())) {
      abandon("writing tensor '" + name + "'", error);
    }
  }
  if (::fsync(fd.get()) != 0) {
    const int error = errno;
    abandon("fsync", error);
  }
  if (fd.close() != 0) {
    const int error = errno;
    abandon("close", error);
  }
  if (::rename(temp.c_str(), path.c_str()) != 0) {
    const int error = errno;
    abandon("rename", error);
  }

  // The rename itself is durable only once the directory entry is on disk.
  const std::filesystem::path parent = path.has_parent_path() ? path.parent_path() : ".";
  UniqueFd dir(::open(parent.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dir.get() < 0 || ::fsync(dir.get()) != 0) {
    const int error = errno;
    fail(target, "written, but syncing its directory failed: " + errno_text(error));
  }
}

}  // namespace moe
