#include "framework/backends/cpu/cpu_backend.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>

#if defined(__x86_64__)
#include <xmmintrin.h>
#endif

#include "framework/backends/block_cache.h"
#include "framework/parallel.h"
#include "framework/random.h"

namespace ml {

CpuBackend& cpu_backend() {
  static CpuBackend backend;
  return backend;
}

namespace {

// 64-byte alignment keeps SIMD loads aligned and avoids false sharing between threads' chunks.
// (BlockCache sizes are multiples of 512, as aligned_alloc requires of a multiple of 64.)
struct AlignedHostMemory {
  void* allocate(size_t nbytes) { return std::aligned_alloc(64, nbytes); }
  void release(void* p) { std::free(p); }
  void before_release_all() {}
  [[noreturn]] void out_of_memory(size_t) { throw std::bad_alloc(); }
};

// Never destroyed: tensors held in statics may free their storage after main() returns.
BlockCache<AlignedHostMemory>& host_cache() {
  static auto* cache = new BlockCache<AlignedHostMemory>(AlignedHostMemory{});
  return *cache;
}

// Under AddressSanitizer every block goes straight back to malloc, so that a use after free is
// still caught rather than hidden by a cached block.
#if defined(__SANITIZE_ADDRESS__)
constexpr bool kCacheHostBlocks = false;
#else
constexpr bool kCacheHostBlocks = true;
#endif

}  // namespace

void* cpu_host_allocate(size_t nbytes) {
  if (kCacheHostBlocks) return host_cache().allocate(nbytes);
  void* p = AlignedHostMemory{}.allocate(BlockCache<AlignedHostMemory>::round_size(nbytes));
  if (!p) throw std::bad_alloc();
  return p;
}
void cpu_host_release(void* ptr, size_t nbytes) {
  if (kCacheHostBlocks)
    host_cache().deallocate(ptr, nbytes);
  else
    std::free(ptr);
}

void cpu_release_cached_memory() {
  if (kCacheHostBlocks) host_cache().release_cached();
}

void* CpuBackend::allocate(size_t nbytes) { return cpu_host_allocate(nbytes); }
void CpuBackend::deallocate(void* ptr, size_t nbytes) { cpu_host_release(ptr, nbytes); }
void CpuBackend::copy_from_host(void* dst, const void* src, size_t nbytes) {
  if (nbytes) std::memcpy(dst, src, nbytes);
}
void CpuBackend::copy_to_host(void* dst, const void* src, size_t nbytes) {
  if (nbytes) std::memcpy(dst, src, nbytes);
}

Generator& default_generator() {
  static Generator generator(0);
  return generator;
}

// At most OMP_THREAD_LIMIT, the default too, and teams of the size asked for (OMP_DYNAMIC off): a
// parallel region gets no more threads than the limit, and with dynamic teams libgomp gave a loaded
// machine teams of one; OpenBLAS's OpenMP build, counting on the threads it was told of, then waits
// for the missing ones forever (a float64 product hung either way).
void set_num_threads(int n) {
  if (n <= 0) n = omp_get_max_threads();  // the default: OMP_NUM_THREADS, or all cores
  n = std::min(n, omp_get_thread_limit());
  omp_set_dynamic(0);
  omp_set_num_threads(n);
  openblas_set_num_threads(n);
}
int num_threads() { return std::min(omp_get_max_threads(), omp_get_thread_limit()); }

// MXCSR's FTZ (bit 15: a denormal result becomes zero) and DAZ (bit 6: a denormal input reads as
// zero). Each thread has its own MXCSR, and a thread starts with a copy of its creator's: the team
// of the region below takes the setting, and threads started later take it from the main thread.
void set_flush_denormals(bool flush) {
#if defined(__x86_64__)
  constexpr unsigned kFlushToZero = 1u << 15, kDenormalsAreZero = 1u << 6, kBoth = kFlushToZero | kDenormalsAreZero;
  const auto apply = [flush] { _mm_setcsr(flush ? _mm_getcsr() | kBoth : _mm_getcsr() & ~kBoth); };
  apply();
#pragma omp parallel
  apply();
#else
  (void)flush;
#endif
}

}  // namespace ml
