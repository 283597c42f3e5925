// Counts every heap allocation of the process while a body runs, on every thread, by who asked:
// moe-ep's own code (the test program and libstdc++ on its behalf), oneDNN (libdnnl and the
// OpenMP runtime it runs on), or MPI (not counted: it draws from its own free lists).
// It replaces the global operator new and interposes the C allocation functions (malloc, calloc,
// realloc, posix_memalign, aligned_alloc, memalign, valloc) so that oneDNN's C-level
// allocations, which no operator new sees, count too. Callers are told apart by the shared
// object their return address lies in (dladdr).
//
// DEFINES those functions: include it in exactly one translation unit of a test binary. It
// conflicts with ASan's and TSan's allocators: sanitizer builds leave such tests out.
#pragma once

#include <dlfcn.h>

#include <atomic>
#include <cstddef>
#include <cstdlib>
#include <functional>
#include <new>
#include <string_view>

extern "C" {
void* __libc_malloc(std::size_t);
void* __libc_calloc(std::size_t, std::size_t);
void* __libc_realloc(void*, std::size_t);
void* __libc_memalign(std::size_t, std::size_t);
}

namespace moe::test {

struct AllocationCounts {
  long moe = 0;              // must be 0 in steady state
  long onednn = 0;           // every oneDNN allocation
  long onednn_buffers = 0;   // those of kBufferBytes or more (scratchpads, packing buffers)
  std::size_t onednn_largest = 0;
  // Below this an allocation is bookkeeping, not a buffer: oneDNN 2.6 allocates a few such
  // blocks (its argument map, tens of bytes) inside every primitive execution, whatever the
  // implementation, and offers no way around it.
  static constexpr std::size_t kBufferBytes = 4096;
};

namespace allocation_detail {

inline std::atomic<bool> counting{false};
inline std::atomic<long> moe{0}, onednn{0}, onednn_buffers{0};
inline std::atomic<std::size_t> onednn_largest{0};
inline thread_local bool inside = false;  // dladdr or the counter itself allocating

enum class Owner { program, dnnl, other };

inline Owner owner_of(void* caller, bool cxx_new) {
  Dl_info info;
  Dl_info self;
  if (dladdr(caller, &info) == 0 || info.dli_fname == nullptr) return Owner::other;
  const std::string_view file(info.dli_fname);
  for (std::string_view lib : {"libdnnl", "libgomp"}) {
    if (file.find(lib) != std::string_view::npos) return Owner::dnnl;
  }
  for (std::string_view lib : {"libmpi", "libopen-pal", "libopen-rte", "libevent", "libpmix",
                               "mca_", "libhwloc"}) {
    if (file.find(lib) != std::string_view::npos) return Owner::other;
  }
  // operator new from anywhere else is moe-ep's (the old rule of this counter); a C-level
  // allocation only when it comes from the program itself or libstdc++, not from libc's or the
  // dynamic loader's own housekeeping.
  if (cxx_new || file.find("libstdc++") != std::string_view::npos) return Owner::program;
  dladdr(reinterpret_cast<void*>(&owner_of), &self);
  return info.dli_fbase == self.dli_fbase ? Owner::program : Owner::other;
}

inline void record(void* caller, std::size_t bytes, bool cxx_new) {
  if (!counting.load(std::memory_order_relaxed) || inside) return;
  inside = true;
  switch (owner_of(caller, cxx_new)) {
    case Owner::program: moe.fetch_add(1); break;
    case Owner::dnnl: {
      onednn.fetch_add(1);
      if (bytes >= AllocationCounts::kBufferBytes) onednn_buffers.fetch_add(1);
      std::size_t largest = onednn_largest.load();
      while (bytes > largest && !onednn_largest.compare_exchange_weak(largest, bytes)) {
      }
      break;
    }
    case Owner::other: break;
  }
  inside = false;
}

inline void* new_impl(std::size_t n, void* caller, std::size_t alignment = 0) {
  record(caller, n, true);
  if (n == 0) n = 1;
  void* p = alignment > alignof(std::max_align_t) ? __libc_memalign(alignment, n)
                                                  : __libc_malloc(n);
  if (p == nullptr) throw std::bad_alloc();
  return p;
}

}  // namespace allocation_detail

// Runs `body` and returns what it allocated.
inline AllocationCounts allocations_during(const std::function<void()>& body) {
  using namespace allocation_detail;
  moe = 0;
  onednn = 0;
  onednn_buffers = 0;
  onednn_largest = 0;
  counting = true;
  body();
  counting = false;
  return {moe.load(), onednn.load(), onednn_buffers.load(), onednn_largest.load()};
}

}  // namespace moe::test

#define MOE_CALLER __builtin_return_address(0)
using moe::test::allocation_detail::new_impl;
using moe::test::allocation_detail::record;

void* operator new(std::size_t n) { return new_impl(n, MOE_CALLER); }
void* operator new[](std::size_t n) { return new_impl(n, MOE_CALLER); }
void* operator new(std::size_t n, std::align_val_t a) {
  return new_impl(n, MOE_CALLER, static_cast<std::size_t>(a));
}
void* operator new[](std::size_t n, std::align_val_t a) {
  return new_impl(n, MOE_CALLER, static_cast<std::size_t>(a));
}
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  try { return new_impl(n, MOE_CALLER); } catch (...) { return nullptr; }
}
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept {
  try { return new_impl(n, MOE_CALLER); } catch (...) { return nullptr; }
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }

// The C allocation functions: glibc's own implementations underneath (__libc_*), so no lookup
// (dlsym) is needed and free() stays glibc's.
extern "C" {
void* malloc(std::size_t n) {
  record(MOE_CALLER, n, false);
  return __libc_malloc(n);
}
void* calloc(std::size_t count, std::size_t n) {
  record(MOE_CALLER, count * n, false);
  return __libc_calloc(count, n);
}
void* realloc(void* p, std::size_t n) {
  record(MOE_CALLER, n, false);
  return __libc_realloc(p, n);
}
void* memalign(std::size_t alignment, std::size_t n) {
  record(MOE_CALLER, n, false);
  return __libc_memalign(alignment, n);
}
void* aligned_alloc(std::size_t alignment, std::size_t n) {
  record(MOE_CALLER, n, false);
  return __libc_memalign(alignment, n);
}
void* valloc(std::size_t n) {
  record(MOE_CALLER, n, false);
  return __libc_memalign(4096, n);
}
int posix_memalign(void** out, std::size_t alignment, std::size_t n) {
  record(MOE_CALLER, n, false);
  void* p = __libc_memalign(alignment, n);
  if (p == nullptr) return ENOMEM;
  *out = p;
  return 0;
}
}
#undef MOE_CALLER
