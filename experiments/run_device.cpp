#include "experiments/run_device.h"

#ifdef MUONLAB_WITH_CUDA
#include "framework/backends/cuda/cuda_backend.h"
#endif

#include <stdexcept>

#include "framework/backend.h"
#include "framework/parallel.h"

namespace ml {

Device run_device(const RunConfig& config) {
  const Device device{config.device, 0};
  if (device.is_cuda() && !cuda_available())
    throw std::runtime_error("device: cuda was requested, but no CUDA device is usable (built without CUDA, or no GPU)");
#ifdef MUONLAB_WITH_CUDA
  // float32 products and convolutions stay exact unless the config allows TF32 or bf16.
  if (device.is_cuda()) {
    cuda_set_matmul_precision(config.matmul_precision);
    cuda_set_deterministic(config.deterministic);
  }
#endif
  return device;
}

ThreadCountScope::ThreadCountScope(int64_t threads) : previous_(num_threads()) { set_num_threads(static_cast<int>(threads)); }

ThreadCountScope::~ThreadCountScope() { set_num_threads(previous_); }

std::pair<Tensor, Tensor> batch_tensors(const HostBatch& batch, Device device) {
  const Tensor inputs = batch.input_ids.empty() ? Tensor::from_vector(batch.inputs, batch.input_shape, device)
                                                : Tensor::from_vector(batch.input_ids, batch.input_shape, device);
  return {inputs, Tensor::from_vector(batch.targets, batch.target_shape, device)};
}

}  // namespace ml
