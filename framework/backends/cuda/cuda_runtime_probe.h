// Device discovery, compiled by nvcc into muonlab_cuda; safe to call without a GPU.
#pragma once

namespace ml {
// Number of usable CUDA devices; 0 when there is no driver or no device.
int cuda_device_count();
}  // namespace ml
