#include "runtime/initialization.hpp"

#include <algorithm>
#include <cmath>
#include <map>
#include <numbers>
#include <string>
#include <vector>

#include "runtime/layer_tensors.hpp"

namespace moe {
namespace {

std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

std::uint64_t stream_key(std::uint64_t seed, std::string_view name) {
  std::uint64_t h = 1469598103934665603ull;  // FNV-1a of the name
  for (unsigned char c : name) h = (h ^ c) * 1099511628211ull;
  return splitmix64(seed ^ h);
}

// A double in [0, 1) from the top 53 bits.
double unit(std::uint64_t key, std::uint64_t i) {
  return static_cast<double>(splitmix64(key + i) >> 11) * 0x1.0p-53;
}

}  // namespace

void fill_uniform(std::span<float> values, float bound, std::uint64_t seed, std::string_view name) {
  const std::uint64_t key = stream_key(seed, name);
  for (std::size_t i = 0; i < values.size(); ++i) {
    values[i] = static_cast<float>((2.0 * unit(key, i) - 1.0) * static_cast<double>(bound));
  }
}

void fill_normal(std::span<float> values, std::uint64_t seed, std::string_view name) {
  const std::uint64_t key = stream_key(seed, name);
  for (std::size_t i = 0; i < values.size(); ++i) {
    const double u1 = 1.0 - unit(key, 2 * i);  // (0, 1]: log is finite
    const double u2 = unit(key, 2 * i + 1);
    values[i] = static_cast<float>(std::sqrt(-2.0 * std::log(u1)) *
                                   std::cos(2.0 * std::numbers::pi * u2));
  }
}

void init_parameters(MoeLayer& layer, std::uint64_t seed) {
  // nn.Linear: a weight [out, in] reads `in`; a bias has no fan-in of its own and takes its weight's.
  const std::vector<LayerTensor> tensors = layer_parameters(layer);
  std::map<std::string, std::int64_t> fan_in;
  for (const LayerTensor& t : tensors) {
    if (t.shape.size() == 2) fan_in[t.name] = t.shape[1];
  }
  for (const LayerTensor& t : tensors) {
    const std::string weight = t.shape.size() == 2 ? t.name : t.name.substr(0, t.name.size() - 4) + "weight";
    fill_uniform(t.value, static_cast<float>(1.0 / std::sqrt(static_cast<double>(fan_in.at(weight)))), seed, t.name);
  }
  // The selection bias is a buffer that starts at zero (DeepSeek-V3).
  for (const LayerTensor& t : layer_buffers(layer)) std::fill(t.value.begin(), t.value.end(), 0.0f);
}

}  // namespace moe
