// The host launcher of a data-path kernel: op(i) for every i of the index space [0, n), in order.
// The CUDA launcher (experts/device/launch_device.hpp) runs the same op over the same index space,
// one index per thread; an op therefore never depends on the order of its indices (each writes
// only what its own index owns), and the two give the same result.
#pragma once

#include <cstdint>

namespace moe::device {

// What a kernel's work is: a copyable functor called with one index.
template <class Op>
concept IndexOp = requires(const Op& op, std::int64_t i) { op(i); };

template <IndexOp Op>
void launch_host(std::int64_t n, const Op& op) {
  for (std::int64_t i = 0; i < n; ++i) op(i);
}

}  // namespace moe::device
