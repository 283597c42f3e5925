// Safetensors reading and writing: round trips of every dtype, the exact bytes the writer
// produces, one test per malformed input the reader must reject, and atomic writes.
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <csignal>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "runtime/safetensors.hpp"

namespace fs = std::filesystem;
using moe::DType;
using moe::FileError;
using moe::SafetensorsFile;
using moe::Tensor;

namespace {

const std::string kSource = "case.safetensors";

std::vector<std::byte> to_bytes(const std::string& text) {
  std::vector<std::byte> out(text.size());
  std::transform(text.begin(), text.end(), out.begin(),
                 [](char c) { return static_cast<std::byte>(c); });
  return out;
}

std::string to_string(const std::vector<std::byte>& bytes) {
  return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
}

// A file with an explicit header length field, so tests can also lie about it.
std::vector<std::byte> raw_file(std::uint64_t header_length, const std::string& header,
                                const std::string& data) {
  std::string out(8, '\0');
  std::memcpy(out.data(), &header_length, sizeof(header_length));
  return to_bytes(out + header + data);
}

// A file whose length field matches its header.
std::vector<std::byte> raw_file(const std::string& header, const std::string& data = "") {
  return raw_file(header.size(), header, data);
}

SafetensorsFile parse(const std::vector<std::byte>& bytes) {
  return moe::parse_safetensors(bytes, kSource);
}

// The reader must throw FileError (not bad_alloc, not a JSON exception) naming the file and the
// problem.
#define REQUIRE_REJECTED(bytes, problem)                                       \
  do {                                                                         \
    const auto rejected_bytes_ = (bytes);                                      \
    REQUIRE_THROWS_AS(parse(rejected_bytes_), FileError);                      \
    REQUIRE_THROWS_WITH(parse(rejected_bytes_),                                \
                        Catch::Contains(kSource) && Catch::Contains(problem)); \
  } while (false)

std::vector<std::byte> pattern_bytes(std::size_t size, unsigned seed) {
  std::vector<std::byte> out(size);
  for (std::size_t i = 0; i < size; ++i) {
    out[i] = static_cast<std::byte>((i * 131 + seed * 17 + 7) & 0xFF);
  }
  return out;
}

Tensor make_tensor(DType dtype, std::vector<std::int64_t> shape, unsigned seed) {
  Tensor tensor;
  tensor.dtype = dtype;
  tensor.shape = std::move(shape);
  tensor.data =
      pattern_bytes(static_cast<std::size_t>(tensor.numel()) * moe::dtype_size(dtype), seed);
  return tensor;
}

void require_same(const SafetensorsFile& a, const SafetensorsFile& b) {
  REQUIRE(a.metadata == b.metadata);
  REQUIRE(a.tensors.size() == b.tensors.size());
  for (const auto& [name, tensor] : a.tensors) {
    INFO("tensor " << name);
    REQUIRE(b.tensors.count(name) == 1);
    const Tensor& other = b.tensors.at(name);
    REQUIRE(tensor.dtype == other.dtype);
    REQUIRE(tensor.shape == other.shape);
    REQUIRE(tensor.data == other.data);
  }
}

std::vector<std::byte> file_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return to_bytes(text);
}

void put_file(const fs::path& path, const std::vector<std::byte>& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
}

std::vector<std::string> names_in(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir)) names.push_back(entry.path().filename());
  std::sort(names.begin(), names.end());
  return names;
}

// A fresh directory per test, removed afterwards.
class ScratchDir {
 public:
  ScratchDir() {
    static std::atomic<int> counter{0};
    path_ = fs::temp_directory_path() / ("moe_test_safetensors_" + std::to_string(::getpid()) +
                                         "_" + std::to_string(counter.fetch_add(1)));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  ~ScratchDir() {
    std::error_code ignored;
    fs::remove_all(path_, ignored);
  }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

// Makes every write past `bytes` fail with EFBIG for the lifetime of the guard (SIGXFSZ
// ignored so the process survives), to simulate a disk that fills up mid-write.
class FileSizeLimit {
 public:
  explicit FileSizeLimit(rlim_t bytes) {
    REQUIRE(::getrlimit(RLIMIT_FSIZE, &saved_) == 0);
    previous_handler_ = std::signal(SIGXFSZ, SIG_IGN);
    rlimit limited = saved_;
    limited.rlim_cur = bytes;
    REQUIRE(::setrlimit(RLIMIT_FSIZE, &limited) == 0);
  }
  FileSizeLimit(const FileSizeLimit&) = delete;
  FileSizeLimit& operator=(const FileSizeLimit&) = delete;
  ~FileSizeLimit() {
    ::setrlimit(RLIMIT_FSIZE, &saved_);
    std::signal(SIGXFSZ, previous_handler_);
  }

 private:
  rlimit saved_{};
  void (*previous_handler_)(int) = SIG_DFL;
};

constexpr DType kAllDTypes[] = {DType::f32, DType::f64, DType::bf16, DType::f16,
                                DType::i64, DType::i32, DType::u8};

}  // namespace

// --- dtypes and tensors ------------------------------------------------------------------------

TEST_CASE("safetensors: dtype names and sizes follow the safetensors spelling", "[safetensors]") {
  CHECK(moe::dtype_name(DType::f32) == "F32");
  CHECK(moe::dtype_name(DType::f64) == "F64");
  CHECK(moe::dtype_name(DType::bf16) == "BF16");
  CHECK(moe::dtype_name(DType::f16) == "F16");
  CHECK(moe::dtype_name(DType::i64) == "I64");
  CHECK(moe::dtype_name(DType::i32) == "I32");
  CHECK(moe::dtype_name(DType::u8) == "U8");
  CHECK(moe::dtype_size(DType::f32) == 4);
  CHECK(moe::dtype_size(DType::f64) == 8);
  CHECK(moe::dtype_size(DType::bf16) == 2);
  CHECK(moe::dtype_size(DType::f16) == 2);
  CHECK(moe::dtype_size(DType::i64) == 8);
  CHECK(moe::dtype_size(DType::i32) == 4);
  CHECK(moe::dtype_size(DType::u8) == 1);
}

TEST_CASE("safetensors: numel of scalars, empty and regular shapes", "[safetensors]") {
  Tensor tensor;
  tensor.shape = {};
  CHECK(tensor.numel() == 1);
  tensor.shape = {3, 0, 5};
  CHECK(tensor.numel() == 0);
  tensor.shape = {2, 3, 4};
  CHECK(tensor.numel() == 24);
  tensor.shape = {2, -3};
  CHECK_THROWS_AS(tensor.numel(), std::invalid_argument);
  tensor.shape = {std::int64_t{1} << 40, std::int64_t{1} << 40};
  CHECK_THROWS_AS(tensor.numel(), std::invalid_argument);
}

TEST_CASE("safetensors: typed views and constructors", "[safetensors]") {
  const std::vector<float> values{1.5f, -2.0f, 3.25f, 0.0f, 1e30f, -7.0f};
  Tensor floats = Tensor::from_f32({2, 3}, values);
  CHECK(floats.dtype == DType::f32);
  CHECK(floats.shape == std::vector<std::int64_t>{2, 3});
  REQUIRE(floats.data.size() == 24);
  const auto view = std::as_const(floats).f32();
  CHECK(std::vector<float>(view.begin(), view.end()) == values);
  floats.f32()[4] = 42.0f;
  float stored = 0;
  std::memcpy(&stored, floats.data.data() + 16, 4);
  CHECK(stored == 42.0f);
  CHECK_THROWS_AS(floats.i64(), std::invalid_argument);

  const std::vector<std::int64_t> ints{std::numeric_limits<std::int64_t>::min(), -1, 0,
                                       std::numeric_limits<std::int64_t>::max()};
  Tensor counts = Tensor::from_i64({4}, ints);
  CHECK(counts.dtype == DType::i64);
  const auto int_view = std::as_const(counts).i64();
  CHECK(std::vector<std::int64_t>(int_view.begin(), int_view.end()) == ints);
  CHECK_THROWS_AS(counts.f32(), std::invalid_argument);

  CHECK(Tensor::from_f32({}, std::vector<float>{2.0f}).f32()[0] == 2.0f);
  CHECK(Tensor::from_f32({0, 3}, {}).f32().empty());
  CHECK_THROWS_AS(Tensor::from_f32({2, 2}, values), std::invalid_argument);
  CHECK_THROWS_AS(Tensor::from_i64({-1}, ints), std::invalid_argument);

  // A view never exposes bytes the shape does not account for.
  floats.data.pop_back();
  CHECK_THROWS_AS(floats.f32(), std::invalid_argument);
}

// --- round trips -------------------------------------------------------------------------------

TEST_CASE("safetensors: every dtype round-trips, including scalars and empty tensors",
          "[safetensors]") {
  SafetensorsFile file;
  unsigned seed = 0;
  for (const DType dtype : kAllDTypes) {
    const std::string name(moe::dtype_name(dtype));
    file.tensors[name + ".matrix"] = make_tensor(dtype, {3, 5}, ++seed);
    file.tensors[name + ".scalar"] = make_tensor(dtype, {}, ++seed);
    file.tensors[name + ".empty"] = make_tensor(dtype, {4, 0, 2}, ++seed);
    file.tensors[name + ".vector"] = make_tensor(dtype, {7}, ++seed);
  }
  const auto bytes = moe::serialize_safetensors(file);
  require_same(file, parse(bytes));

  ScratchDir dir;
  const fs::path path = dir.path() / "all.safetensors";
  moe::write_safetensors(path, file);
  require_same(file, moe::read_safetensors(path));
  CHECK(file_bytes(path) == bytes);
}

TEST_CASE("safetensors: a file of only empty tensors, and a file with nothing at all",
          "[safetensors]") {
  SafetensorsFile file;
  file.tensors["a"] = make_tensor(DType::f32, {0}, 1);
  file.tensors["b"] = make_tensor(DType::i64, {2, 0}, 2);
  require_same(file, parse(moe::serialize_safetensors(file)));
  require_same(SafetensorsFile{}, parse(moe::serialize_safetensors(SafetensorsFile{})));
}

TEST_CASE("safetensors: metadata round-trips", "[safetensors]") {
  SafetensorsFile file;
  file.metadata = {{"tokens_per_rank", "3,0,5"},
                   {"activation", "gelu"},
                   {"empty", ""},
                   {"quote\"and\\backslash", "line\nbreak\ttab"},
                   {"unicode", "\xc3\xa9t\xc3\xa9 \xe2\x86\x92 \xf0\x9f\x98\x80"}};
  file.tensors["input"] = Tensor::from_f32({1, 2}, std::vector<float>{1.0f, 2.0f});
  const auto reread = parse(moe::serialize_safetensors(file));
  require_same(file, reread);
  // Metadata alone (no tensors) is a valid file too.
  file.tensors.clear();
  require_same(file, parse(moe::serialize_safetensors(file)));
}

TEST_CASE("safetensors: a 16 MiB tensor survives a write and a read", "[safetensors]") {
  SafetensorsFile file;
  file.tensors["big"] = make_tensor(DType::u8, {16, 1024, 1024}, 9);
  file.tensors["small"] = make_tensor(DType::f32, {3}, 10);
  ScratchDir dir;
  const fs::path path = dir.path() / "big.safetensors";
  moe::write_safetensors(path, file);
  require_same(file, moe::read_safetensors(path));
}

// --- the exact bytes ---------------------------------------------------------------------------

TEST_CASE("safetensors: the writer produces the documented layout byte for byte", "[safetensors]") {
  SafetensorsFile file;
  file.tensors["x"] = Tensor::from_f32({1}, std::vector<float>{1.0f});
  const std::string json = R"({"x":{"data_offsets":[0,4],"dtype":"F32","shape":[1]}})";
  REQUIRE(json.size() == 54);
  const std::string padded = json + "  ";  // 56 = 7 * 8
  const auto expected = raw_file(56, padded, std::string("\x00\x00\x80\x3f", 4));
  CHECK(moe::serialize_safetensors(file) == expected);
}

TEST_CASE("safetensors: output is deterministic: sorted names, padded header, identical bytes",
          "[safetensors]") {
  // The same content, inserted in a different order.
  SafetensorsFile first;
  first.tensors["b"] = make_tensor(DType::f16, {3}, 1);
  first.tensors["a"] = make_tensor(DType::i32, {2, 2}, 2);
  first.tensors["c"] = make_tensor(DType::u8, {5}, 3);
  first.metadata["z"] = "1";
  first.metadata["y"] = "2";
  SafetensorsFile second;
  second.metadata["y"] = "2";
  second.metadata["z"] = "1";
  second.tensors["c"] = first.tensors["c"];
  second.tensors["a"] = first.tensors["a"];
  second.tensors["b"] = first.tensors["b"];

  const auto bytes = moe::serialize_safetensors(first);
  CHECK(moe::serialize_safetensors(second) == bytes);

  std::uint64_t header_length = 0;
  std::memcpy(&header_length, bytes.data(), 8);
  CHECK(header_length % 8 == 0);
  const std::string header = to_string(bytes).substr(8, header_length);
  // Padding is spaces only, after the JSON.
  const auto json_end = header.find_last_not_of(' ');
  CHECK(header[json_end] == '}');
  // Tensors are laid out in name order.
  CHECK(header.find(R"("a":{"data_offsets":[0,16])") != std::string::npos);
  CHECK(header.find(R"("b":{"data_offsets":[16,22])") != std::string::npos);
  CHECK(header.find(R"("c":{"data_offsets":[22,27])") != std::string::npos);
  CHECK(bytes.size() == 8 + header_length + 27);

  ScratchDir dir;
  moe::write_safetensors(dir.path() / "one.safetensors", first);
  moe::write_safetensors(dir.path() / "two.safetensors", second);
  CHECK(file_bytes(dir.path() / "one.safetensors") == bytes);
  CHECK(file_bytes(dir.path() / "two.safetensors") == bytes);
}

TEST_CASE("safetensors: the reader accepts files from other writers", "[safetensors]") {
  // Unpadded header, keys in another order, tensors stored out of name order, metadata first,
  // JSON whitespace and escapes.
  const std::string header =
      R"({"__metadata__": {"format": "pt"}, "w": {"shape": [2], "dtype": "I32",)"
      R"( "data_offsets": [4, 12]}, "b\u00e9": {"dtype": "U8", "data_offsets": [0, 4],)"
      R"( "shape": [2, 2]}})";
  const std::string data("\x01\x02\x03\x04\x05\x00\x00\x00\xff\xff\xff\xff", 12);
  const auto file = parse(raw_file(header, data));
  REQUIRE(file.metadata == std::map<std::string, std::string>{{"format", "pt"}});
  REQUIRE(file.tensors.size() == 2);
  const Tensor& w = file.tensors.at("w");
  CHECK(w.dtype == DType::i32);
  CHECK(w.shape == std::vector<std::int64_t>{2});
  std::int32_t values[2] = {};
  std::memcpy(values, w.data.data(), 8);
  CHECK(values[0] == 5);
  CHECK(values[1] == -1);
  const Tensor& b = file.tensors.at("b\xc3\xa9");
  CHECK(b.shape == std::vector<std::int64_t>{2, 2});
  CHECK(b.data == to_bytes("\x01\x02\x03\x04"));
}

// --- rejections: the file as a whole -----------------------------------------------------------

TEST_CASE("safetensors: rejects a missing file, naming it", "[safetensors][reject]") {
  ScratchDir dir;
  const fs::path path = dir.path() / "absent.safetensors";
  REQUIRE_THROWS_AS(moe::read_safetensors(path), FileError);
  REQUIRE_THROWS_WITH(moe::read_safetensors(path), Catch::Contains(path.string()) &&
                                                       Catch::Contains("cannot open") &&
                                                       Catch::Contains("No such file"));
  REQUIRE_THROWS_WITH(moe::read_safetensors(dir.path()), Catch::Contains(dir.path().string()) &&
                                                             Catch::Contains("not a regular file"));
}

TEST_CASE("safetensors: rejects a file shorter than 8 bytes", "[safetensors][reject]") {
  REQUIRE_REJECTED(to_bytes(""), "shorter than the 8-byte header length field");
  REQUIRE_REJECTED(to_bytes("{}     "), "file is 7 bytes, shorter than the 8-byte");
  ScratchDir dir;
  const fs::path path = dir.path() / "short.safetensors";
  put_file(path, to_bytes("abc"));
  REQUIRE_THROWS_WITH(moe::read_safetensors(path),
                      Catch::Contains(path.string()) && Catch::Contains("shorter than"));
}

TEST_CASE("safetensors: rejects a header length beyond the file without allocating it",
          "[safetensors][reject]") {
  // A hostile length would throw bad_alloc (or succeed and read out of bounds) if the reader
  // allocated before checking.
  REQUIRE_REJECTED(raw_file(std::uint64_t{1} << 63, "{}", ""),
                   "header length 9223372036854775808 is larger than the 2 bytes");
  REQUIRE_REJECTED(raw_file(std::numeric_limits<std::uint64_t>::max(), "{}", ""),
                   "is larger than the 2 bytes");
  REQUIRE_REJECTED(raw_file(3, "{}", ""), "header length 3 is larger than the 2 bytes");
  ScratchDir dir;
  const fs::path path = dir.path() / "hostile.safetensors";
  put_file(path, raw_file(std::uint64_t{1} << 63, "{}", ""));
  REQUIRE_THROWS_AS(moe::read_safetensors(path), FileError);
  REQUIRE_THROWS_WITH(moe::read_safetensors(path),
                      Catch::Contains(path.string()) && Catch::Contains("is larger than the"));
}

// --- rejections: the JSON header ---------------------------------------------------------------

TEST_CASE("safetensors: rejects a header that is not valid JSON", "[safetensors][reject]") {
  REQUIRE_REJECTED(raw_file(R"({"a":)"), "header is not valid JSON");
  REQUIRE_REJECTED(raw_file(R"({"a":{}} x)"), "header is not valid JSON");
  // Padding must be whitespace, not NUL bytes.
  REQUIRE_REJECTED(raw_file(std::string("{}\0\0", 4)),
                   "header is not valid JSON: NUL byte at byte 2");
  // nlohmann's lexer would stop at the NUL and never see the rest.
  REQUIRE_REJECTED(raw_file(std::string("{}\0hidden", 9)), "NUL byte");
  REQUIRE_REJECTED(raw_file(std::string("{\"a\0\":1}", 8)), "NUL byte at byte 3");
  REQUIRE_REJECTED(raw_file(R"({/* comment */})"), "header is not valid JSON");
}

TEST_CASE("safetensors: rejects a header that is not valid UTF-8", "[safetensors][reject]") {
  REQUIRE_REJECTED(raw_file("{\"a\xff\":1}"), "header is not valid UTF-8 (byte 3");
  REQUIRE_REJECTED(raw_file("{\"\xc0\xaf\":1}"), "not valid UTF-8");          // overlong '/'
  REQUIRE_REJECTED(raw_file("{\"\xed\xa0\x80\":1}"), "not valid UTF-8");      // a surrogate
  REQUIRE_REJECTED(raw_file("{\"\xf4\x90\x80\x80\":1}"), "not valid UTF-8");  // > U+10FFFF
  REQUIRE_REJECTED(raw_file("{\"\xe2\x82\":1}"), "not valid UTF-8");          // cut short
}

TEST_CASE("safetensors: rejects a header that is not a JSON object", "[safetensors][reject]") {
  REQUIRE_REJECTED(raw_file("[1, 2]  "), "header is not a JSON object");
  REQUIRE_REJECTED(raw_file("\"text\""), "header is not a JSON object");
  REQUIRE_REJECTED(raw_file(""), "header is not a JSON object");
  REQUIRE_REJECTED(raw_file(" {}"), "header is not a JSON object");
}

TEST_CASE("safetensors: rejects a header nested too deeply, without overflowing the stack",
          "[safetensors][reject]") {
  REQUIRE_REJECTED(raw_file(R"({"a":[[[[[[[[[[1]]]]]]]]]]})"), "nested deeper than");
  const std::size_t depth = 1'000'000;
  REQUIRE_REJECTED(raw_file("{\"a\":" + std::string(depth, '[') + std::string(depth, ']') + "}"),
                   "nested deeper than");
  std::string objects;
  for (std::size_t i = 0; i < depth; ++i) objects += "{\"a\":";
  REQUIRE_REJECTED(raw_file(objects + "1" + std::string(depth, '}')), "nested deeper than");
}

TEST_CASE("safetensors: rejects duplicate keys", "[safetensors][reject]") {
  const std::string entry = R"({"dtype":"U8","shape":[0],"data_offsets":[0,0]})";
  REQUIRE_REJECTED(raw_file("{\"a\":" + entry + ",\"a\":" + entry + "}"), "has the key 'a' twice");
  REQUIRE_REJECTED(
      raw_file(R"({"a":{"dtype":"U8","dtype":"U8","shape":[0],"data_offsets":[0,0]}})"),
      "has the key 'dtype' twice");
}

// --- rejections: tensor entries ----------------------------------------------------------------

TEST_CASE("safetensors: rejects a tensor entry missing a field", "[safetensors][reject]") {
  REQUIRE_REJECTED(raw_file(R"({"t":{"shape":[1],"data_offsets":[0,1]}})", "x"),
                   "tensor 't' is missing \"dtype\"");
  REQUIRE_REJECTED(raw_file(R"({"t":{"dtype":"U8","data_offsets":[0,1]}})", "x"),
                   "tensor 't' is missing \"shape\"");
  REQUIRE_REJECTED(raw_file(R"({"t":{"dtype":"U8","shape":[1]}})", "x"),
                   "tensor 't' is missing \"data_offsets\"");
}

TEST_CASE("safetensors: rejects tensor fields of the wrong JSON type", "[safetensors][reject]") {
  REQUIRE_REJECTED(raw_file(R"({"t":[1]})"), "tensor 't' is not a JSON object");
  REQUIRE_REJECTED(raw_file(R"({"t":{"dtype":4,"shape":[1],"data_offsets":[0,1]}})", "x"),
                   "tensor 't': dtype is not a string");
  REQUIRE_REJECTED(raw_file(R"({"t":{"dtype":"U8","shape":1,"data_offsets":[0,1]}})", "x"),
                   "tensor 't': shape is not an array");
  REQUIRE_REJECTED(raw_file(R"({"t":{"dtype":"U8","shape":[1.0],"data_offsets":[0,1]}})", "x"),
                   "tensor 't': shape dimension is not an integer");
  REQUIRE_REJECTED(raw_file(R"({"t":{"dtype":"U8","shape":["1"],"data_offsets":[0,1]}})", "x"),
                   "tensor 't': shape dimension is not an integer");
  REQUIRE_REJECTED(raw_file(R"({"t":{"dtype":"U8","shape":[1],"data_offsets":{"0":1}}})", "x"),
                   "tensor 't': data_offsets is not an array [begin, end]");
  REQUIRE_REJECTED(raw_file(R"({"t":{"dtype":"U8","shape":[1],"data_offsets":[0]}})", "x"),
                   "tensor 't': data_offsets is not an array [begin, end]");
  REQUIRE_REJECTED(raw_file(R"({"t":{"dtype":"U8","shape":[1],"data_offsets":[0,1,1]}})", "x"),
                   "tensor 't': data_offsets is not an array [begin, end]");
  REQUIRE_REJECTED(raw_file(R"({"t":{"dtype":"U8","shape":[1],"data_offsets":[0,"1"]}})", "x"),
                   "tensor 't': data_offsets end is not an integer");
  REQUIRE_REJECTED(raw_file(R"({"t":{"dtype":"U8","shape":[1],"data_offsets":[null,1]}})", "x"),
                   "tensor 't': data_offsets begin is not an integer");
  // Beyond uint64 the JSON parser yields a float: still not an integer.
  REQUIRE_REJECTED(
      raw_file(R"({"t":{"dtype":"U8","shape":[1],"data_offsets":[0,99999999999999999999]}})", "x"),
      "data_offsets end is not an integer");
}

TEST_CASE("safetensors: rejects unknown fields in a tensor entry", "[safetensors][reject]") {
  REQUIRE_REJECTED(
      raw_file(R"({"t":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"stride":[1]}})", "x"),
      "tensor 't' has an unknown field 'stride'");
}

TEST_CASE("safetensors: rejects an unknown dtype", "[safetensors][reject]") {
  REQUIRE_REJECTED(raw_file(R"({"t":{"dtype":"BOOL","shape":[1],"data_offsets":[0,1]}})", "x"),
                   "tensor 't' has an unsupported dtype \"BOOL\"");
  REQUIRE_REJECTED(raw_file(R"({"t":{"dtype":"f32","shape":[1],"data_offsets":[0,4]}})", "xxxx"),
                   "unsupported dtype \"f32\"");
}

TEST_CASE("safetensors: rejects negative dimensions", "[safetensors][reject]") {
  REQUIRE_REJECTED(raw_file(R"({"t":{"dtype":"U8","shape":[2,-1],"data_offsets":[0,0]}})"),
                   "tensor 't': shape dimension is negative (-1)");
}

TEST_CASE("safetensors: rejects a shape whose byte size overflows", "[safetensors][reject]") {
  // 2^62 * 2^62 elements, and 2^62 F32 elements (2^64 bytes): neither fits in int64.
  REQUIRE_REJECTED(raw_file(R"({"t":{"dtype":"U8","shape":[4611686018427387904,)"
                            R"(4611686018427387904],"data_offsets":[0,0]}})"),
                   "tensor 't': the byte size of shape");
  REQUIRE_REJECTED(raw_file(R"({"t":{"dtype":"F32","shape":[4611686018427387904],)"
                            R"("data_offsets":[0,0]}})"),
                   "overflows");
  REQUIRE_REJECTED(raw_file(R"({"t":{"dtype":"U8","shape":[9223372036854775808],)"
                            R"("data_offsets":[0,0]}})"),
                   "shape dimension 9223372036854775808 is too large");
}

TEST_CASE("safetensors: rejects data_offsets with begin > end or negative",
          "[safetensors][reject]") {
  REQUIRE_REJECTED(raw_file(R"({"t":{"dtype":"U8","shape":[1],"data_offsets":[2,1]}})", "xx"),
                   "tensor 't': data_offsets [2, 1] has begin > end");
  REQUIRE_REJECTED(raw_file(R"({"t":{"dtype":"U8","shape":[1],"data_offsets":[-1,0]}})", "x"),
                   "tensor 't': data_offsets begin is negative");
}

TEST_CASE("safetensors: rejects data_offsets beyond the data section", "[safetensors][reject]") {
  REQUIRE_REJECTED(raw_file(R"({"t":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}})", "xxx"),
                   "tensor 't': data_offsets [0, 4] end is beyond the data section of 3 bytes");
  REQUIRE_REJECTED(raw_file(R"({"t":{"dtype":"U8","shape":[0],)"
                            R"("data_offsets":[18446744073709551615,18446744073709551615]}})"),
                   "end is beyond the data section of 0 bytes");
}

TEST_CASE("safetensors: rejects a size that does not match shape and dtype",
          "[safetensors][reject]") {
  REQUIRE_REJECTED(raw_file(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", "xxxx"),
                   "tensor 't': data_offsets [0, 4] hold 4 bytes, but shape [2] of F32 needs 8");
  REQUIRE_REJECTED(raw_file(R"({"t":{"dtype":"F16","shape":[],"data_offsets":[0,4]}})", "xxxx"),
                   "hold 4 bytes, but shape [] of F16 needs 2");
}

TEST_CASE("safetensors: rejects overlapping tensors", "[safetensors][reject]") {
  REQUIRE_REJECTED(raw_file(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
                            R"("b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}})",
                            "xxxxxx"),
                   "tensors 'a' [0, 4] and 'b' [2, 6] overlap");
  // The same bytes claimed twice.
  REQUIRE_REJECTED(raw_file(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
                            R"("b":{"dtype":"I32","shape":[1],"data_offsets":[0,4]}})",
                            "xxxx"),
                   "overlap");
  // An empty tensor placed inside another one.
  REQUIRE_REJECTED(raw_file(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
                            R"("e":{"dtype":"U8","shape":[0],"data_offsets":[2,2]}})",
                            "xxxx"),
                   "tensors 'a' [0, 4] and 'e' [2, 2] overlap");
}

TEST_CASE("safetensors: rejects holes and trailing bytes in the data section",
          "[safetensors][reject]") {
  // The format requires the data section to be fully covered (no room for a polyglot file).
  REQUIRE_REJECTED(raw_file(R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},)"
                            R"("b":{"dtype":"U8","shape":[2],"data_offsets":[4,6]}})",
                            "xxxxxx"),
                   "data section has a hole: bytes [2, 4) belong to no tensor");
  REQUIRE_REJECTED(raw_file(R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[1,3]}})", "xxx"),
                   "data section has a hole: bytes [0, 1)");
  REQUIRE_REJECTED(raw_file(R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}})", "xxxxx"),
                   "data section has 3 trailing bytes that belong to no tensor");
  REQUIRE_REJECTED(raw_file("{}", "x"), "data section has 1 trailing bytes");
  // Empty tensors may sit anywhere on a tensor boundary, including the very end.
  CHECK_NOTHROW(parse(raw_file(R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},)"
                               R"("e":{"dtype":"U8","shape":[0],"data_offsets":[2,2]},)"
                               R"("f":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}})",
                               "xx")));
}

TEST_CASE("safetensors: rejects __metadata__ that is not a string-to-string object",
          "[safetensors][reject]") {
  REQUIRE_REJECTED(raw_file(R"({"__metadata__":"format=pt"})"),
                   "__metadata__ is not a string-to-string object");
  REQUIRE_REJECTED(raw_file(R"({"__metadata__":["a"]})"),
                   "__metadata__ is not a string-to-string object");
  REQUIRE_REJECTED(raw_file(R"({"__metadata__":{"top_k":2}})"),
                   "__metadata__ is not a string-to-string object: the value of 'top_k' is 2");
  REQUIRE_REJECTED(raw_file(R"({"__metadata__":{"a":{"b":"c"}}})"),
                   "the value of 'a' is {\"b\":\"c\"}");
}

TEST_CASE("safetensors: read_safetensors reports header problems with the path",
          "[safetensors][reject]") {
  ScratchDir dir;
  const fs::path path = dir.path() / "bad.safetensors";
  put_file(path, raw_file(R"({"t":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})", "xx"));
  REQUIRE_THROWS_AS(moe::read_safetensors(path), FileError);
  REQUIRE_THROWS_WITH(moe::read_safetensors(path),
                      Catch::Contains(path.string()) && Catch::Contains("1 trailing bytes"));
}

// --- writing -----------------------------------------------------------------------------------

TEST_CASE("safetensors: the writer refuses content that cannot form a valid file",
          "[safetensors][write]") {
  ScratchDir dir;
  const fs::path path = dir.path() / "out.safetensors";
  SafetensorsFile file;
  file.tensors["t"] = make_tensor(DType::f32, {2}, 1);
  file.tensors["t"].data.pop_back();
  CHECK_THROWS_AS(moe::write_safetensors(path, file), std::invalid_argument);
  CHECK_THROWS_WITH(moe::serialize_safetensors(file),
                    Catch::Contains("tensor 't' holds 7 bytes") && Catch::Contains("needs 8"));

  file.tensors.clear();
  file.tensors["__metadata__"] = make_tensor(DType::u8, {1}, 1);
  CHECK_THROWS_AS(moe::write_safetensors(path, file), std::invalid_argument);

  file.tensors.clear();
  file.tensors["neg"] = Tensor{DType::u8, {-1}, {}};
  CHECK_THROWS_AS(moe::write_safetensors(path, file), std::invalid_argument);

  file.tensors.clear();
  file.tensors["bad\xff"] = make_tensor(DType::u8, {1}, 1);
  CHECK_THROWS_WITH(moe::write_safetensors(path, file), Catch::Contains("not valid UTF-8"));

  file.tensors.clear();
  file.metadata["k"] = "\xc0";
  CHECK_THROWS_AS(moe::serialize_safetensors(file), std::invalid_argument);

  // Nothing reached the disk.
  CHECK(names_in(dir.path()).empty());
}

TEST_CASE("safetensors: an atomic write leaves no temporary file and replaces the target",
          "[safetensors][write]") {
  ScratchDir dir;
  const fs::path path = dir.path() / "weights.safetensors";
  SafetensorsFile first;
  first.tensors["w"] = make_tensor(DType::f32, {4, 4}, 1);
  moe::write_safetensors(path, first);
  CHECK(names_in(dir.path()) == std::vector<std::string>{"weights.safetensors"});
  require_same(first, moe::read_safetensors(path));

  SafetensorsFile second;
  second.tensors["v"] = make_tensor(DType::i64, {3}, 2);
  moe::write_safetensors(path, second);
  CHECK(names_in(dir.path()) == std::vector<std::string>{"weights.safetensors"});
  require_same(second, moe::read_safetensors(path));

  // A relative path (no directory part) works too.
  const fs::path previous = fs::current_path();
  fs::current_path(dir.path());
  moe::write_safetensors("relative.safetensors", first);
  fs::current_path(previous);
  require_same(first, moe::read_safetensors(dir.path() / "relative.safetensors"));
}

TEST_CASE("safetensors: a failed write fails with FileError and leaves the old file as it was",
          "[safetensors][write]") {
  ScratchDir dir;
  const fs::path path = dir.path() / "weights.safetensors";
  SafetensorsFile old_content;
  old_content.tensors["w"] = make_tensor(DType::f32, {8}, 1);
  moe::write_safetensors(path, old_content);
  const auto old_bytes = file_bytes(path);

  SafetensorsFile new_content;
  new_content.tensors["w"] = make_tensor(DType::u8, {1 << 20}, 2);

  SECTION("the disk fills up in the middle of the data") {
    {
      FileSizeLimit limit(64 * 1024);
      REQUIRE_THROWS_AS(moe::write_safetensors(path, new_content), FileError);
      REQUIRE_THROWS_WITH(
          moe::write_safetensors(path, new_content),
          Catch::Contains(path.string()) && Catch::Contains("cannot write (writing tensor 'w')"));
    }
    CHECK(file_bytes(path) == old_bytes);
    CHECK(names_in(dir.path()) == std::vector<std::string>{"weights.safetensors"});
    // Once space is back, the same write succeeds.
    moe::write_safetensors(path, new_content);
    require_same(new_content, moe::read_safetensors(path));
  }
  SECTION("the directory does not exist") {
    const fs::path missing = dir.path() / "missing" / "weights.safetensors";
    REQUIRE_THROWS_AS(moe::write_safetensors(missing, new_content), FileError);
    REQUIRE_THROWS_WITH(
        moe::write_safetensors(missing, new_content),
        Catch::Contains(missing.string()) && Catch::Contains("No such file or directory"));
    CHECK(!fs::exists(dir.path() / "missing"));
  }
  SECTION("the parent is a regular file") {
    const fs::path under_file = path / "inner.safetensors";
    REQUIRE_THROWS_AS(moe::write_safetensors(under_file, new_content), FileError);
    CHECK(file_bytes(path) == old_bytes);
  }
  SECTION("the target is a directory, so the final rename fails") {
    const fs::path target = dir.path() / "taken";
    fs::create_directory(target);
    REQUIRE_THROWS_WITH(moe::write_safetensors(target, new_content),
                        Catch::Contains(target.string()) && Catch::Contains("(rename)"));
    CHECK(fs::is_directory(target));
    CHECK(names_in(dir.path()) == std::vector<std::string>{"taken", "weights.safetensors"});
  }
  SECTION("the path names no file") {
    REQUIRE_THROWS_AS(moe::write_safetensors(dir.path() / "", new_content), FileError);
    CHECK(names_in(dir.path()) == std::vector<std::string>{"weights.safetensors"});
  }
  CHECK(fs::exists(path));
}
