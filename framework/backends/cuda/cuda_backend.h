// The CUDA backend's public face: the backend object and its memory statistics. Everything
// CUDA-specific stays inside the .cu files, so C++ code includes this without CUDA headers.
#pragma once
#include <cstddef>
#include <cstdint>

#include "framework/backend.h"

namespace ml {

// The backend for cuda:0; throws when no device is present.
Backend& cuda_backend();

struct CudaMemoryStats {
  size_t current_bytes = 0;  // held by live tensors
  size_t peak_bytes = 0;     // the maximum of current_bytes so far
  size_t cached_bytes = 0;   // freed blocks kept for reuse
};
CudaMemoryStats cuda_memory_stats();

// Device-to-host copies so far: every path that brings device data to the host (to_vector,
// item, to(cpu), printing) goes through the backend's copy_to_host, which counts them. A
// computation meant to stay on the device (an optimizer step) must leave this unchanged.
int64_t cuda_device_to_host_copies();

// TF32 tensor-core math for float32 matrix products and convolutions (off: exact float32).
void cuda_set_tf32(bool enabled);

}  // namespace ml
