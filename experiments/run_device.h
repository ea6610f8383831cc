// Where a run computes, as its config says: the device (with its CUDA settings), the thread
// count, and its batches as tensors on that device. The trainer and `muonlab eval` share these.
#pragma once
#include <cstdint>
#include <utility>

#include "datasets/batch.h"
#include "experiments/config.h"
#include "framework/tensor.h"

namespace ml {

// The device of `config`, with its matmul precision and determinism applied on CUDA. Throws when
// cuda is requested and none is usable.
Device run_device(const RunConfig& config);

// Applies the config's thread count for the lifetime of a run and restores the previous one, so
// that a run inside a longer-lived process (tests, the demo) leaves the process as it found it.
class ThreadCountScope {
 public:
  explicit ThreadCountScope(int64_t threads);
  ~ThreadCountScope();
  ThreadCountScope(const ThreadCountScope&) = delete;
  ThreadCountScope& operator=(const ThreadCountScope&) = delete;

 private:
  int previous_;
};

// Host batch -> (inputs, targets) tensors on `device`.
std::pair<Tensor, Tensor> batch_tensors(const HostBatch& batch, Device device);

}  // namespace ml
