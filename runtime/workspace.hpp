// Workspace that grows to the largest batch and then stays, so steady-state calls allocate nothing.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace moe {

template <class T>
void grow(std::vector<T>& v, std::int64_t n) {
  if (static_cast<std::int64_t>(v.size()) < n) v.resize(static_cast<std::size_t>(n));
}

// Rows [first, first + count) of a row-major buffer of `width` values a row.
template <class T>
std::span<T> rows(std::vector<T>& v, std::int64_t first, std::int64_t count, std::int64_t width) {
  return std::span<T>(v).subspan(static_cast<std::size_t>(first * width),
                                 static_cast<std::size_t>(count * width));
}

}  // namespace moe
