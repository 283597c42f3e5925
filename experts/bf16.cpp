#include "experts/bf16.hpp"

#include <cstddef>

// Same dispatch as activation_kernels.cpp: the conversion loops are memory-bound only when they
// vectorize, so each is cloned for AVX-512 and AVX2 and the loader picks one for this CPU.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__SANITIZE_THREAD__)
#define MOE_VECTOR_CLONES [[gnu::target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")]]
#else
#define MOE_VECTOR_CLONES
#endif

namespace moe::experts {

MOE_VECTOR_CLONES void convert(std::span<const float> in, std::span<bf16> out) {
  const float* src = in.data();
  bf16* dst = out.data();
  for (std::size_t i = 0; i < in.size(); ++i) dst[i] = to_bf16(src[i]);
}

MOE_VECTOR_CLONES void convert(std::span<const bf16> in, std::span<float> out) {
  const bf16* src = in.data();
  float* dst = out.data();
  for (std::size_t i = 0; i < in.size(); ++i) dst[i] = to_float(src[i]);
}

MOE_VECTOR_CLONES void convert_rows(std::int64_t rows, std::int64_t cols, const float* in,
                                    std::int64_t ld_in, bf16* out) {
  for (std::int64_t i = 0; i < rows; ++i) {
    const float* src = in + i * ld_in;
    bf16* dst = out + i * cols;
    for (std::int64_t j = 0; j < cols; ++j) dst[j] = to_bf16(src[j]);
  }
}

}  // namespace moe::experts
