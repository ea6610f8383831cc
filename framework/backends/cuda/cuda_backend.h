// The CUDA backend's public face: the backend object and its memory statistics. Everything
// CUDA-specific stays inside the .cu files, so C++ code includes this without CUDA headers.
#pragma once
#include <cstddef>
#include <cstdint>

#include "framework/backend.h"
#include "framework/backends/block_cache.h"

namespace ml {

// The backend for cuda:0; throws when no device is present.
Backend& cuda_backend();

// The device allocator's byte counts (live, peak, cached).
MemoryStats cuda_memory_stats();

// The arithmetic of float32 matrix products (MatmulPrecision, framework/backend.h).
void cuda_set_matmul_precision(MatmulPrecision precision);
MatmulPrecision cuda_matmul_precision();

// Sets the precision until the end of a scope, then restores the previous one (benchmarks, tests).
class CudaMatmulPrecisionScope {
 public:
  explicit CudaMatmulPrecisionScope(MatmulPrecision precision) : previous_(cuda_matmul_precision()) {
    cuda_set_matmul_precision(precision);
  }
  ~CudaMatmulPrecisionScope() { cuda_set_matmul_precision(previous_); }
  CudaMatmulPrecisionScope(const CudaMatmulPrecisionScope&) = delete;
  CudaMatmulPrecisionScope& operator=(const CudaMatmulPrecisionScope&) = delete;

 private:
  MatmulPrecision previous_;
};

// Whether scatter-style sums (index_add, scatter_add, max-pool backward) add each target's
// contributions in a fixed order (sorted by target, then by source position, like the CPU) rather
// than with float atomics in whatever order threads arrive. On by default (the config's
// `deterministic`): two runs then give the same bits.
void cuda_set_deterministic(bool deterministic);
bool cuda_deterministic();

// Device-to-host copies so far: every path that brings device data to the host (to_vector,
// item, to(cpu), printing) goes through the backend's copy_to_host, which counts them. A
// computation meant to stay on the device (an optimizer step) must leave this unchanged.
int64_t cuda_device_to_host_copies();

}  // namespace ml
