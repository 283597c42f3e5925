// Failures one rank meets on its own (a bad input, an allocation), as text: the message the agreed
// error of runtime/error.hpp carries to every rank. "" means no failure.
#pragma once

#include <cmath>
#include <cstdint>
#include <exception>
#include <new>
#include <span>
#include <string>

namespace moe {

// Runs `body`; returns what it threw, as text ("" when it succeeded).
template <class Body>
std::string failure_of(Body&& body) {
  try {
    body();
    return {};
  } catch (const std::bad_alloc&) {
    return "out of memory growing the layer's buffers";
  } catch (const std::exception& e) {
    return e.what();
  }
}

// The error check_finite reports for the non-finite `value` at (row, column) of tensor `name`:
// written once, so the host layers and the device layer say the same.
inline std::string non_finite_message(const char* name, std::int64_t row, std::int64_t column, float value) {
  return std::string(name) + " row " + std::to_string(row) + " column " + std::to_string(column) + " is " +
         (std::isnan(value) ? "NaN" : "infinite") + " (check_finite is on)";
}

// The first non-finite value of a [rows, width] tensor, as an error message, or "".
inline std::string first_non_finite(const char* name, std::span<const float> values, std::int64_t width) {
  for (std::size_t i = 0; i < values.size(); ++i) {
    if (!std::isfinite(values[i])) {
      const auto index = static_cast<std::int64_t>(i);
      return non_finite_message(name, index / width, index % width, values[i]);
    }
  }
  return {};
}

// "" when `values` holds `rows` rows of `width` values, else what is wrong (`call` and `name` say
// where).
inline std::string size_problem(const char* call, const char* name, std::span<const float> values,
                                std::int64_t rows, std::int64_t width) {
  const auto expected = static_cast<std::size_t>(rows * width);
  if (values.size() == expected) return {};
  return std::string(call) + ": " + name + " must have " + std::to_string(expected) + " elements (" +
         std::to_string(rows) + " rows of " + std::to_string(width) + "), got " + std::to_string(values.size());
}

}  // namespace moe
