#include <cuda_runtime.h>

#include "framework/backends/cuda/cuda_runtime_probe.h"

namespace ml {

int cuda_device_count() {
  int count = 0;
  // No driver or no device is an ordinary situation (CI machines): report zero devices.
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return count;
}

}  // namespace ml
