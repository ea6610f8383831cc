// Gradient averaging for data-parallel training (the all-reduce half of PyTorch's DDP).
#pragma once
#include <cstdint>
#include <vector>

#include "framework/distributed/communicator.h"
#include "framework/tensor.h"

namespace ml {

// PyTorch DDP's default bucket: large enough that a model pays a few calls per step, not one per tensor.
constexpr int64_t kGradientBucketBytes = int64_t{25} << 20;

// Replaces every parameter's gradient by its sum over the ranks. Each rank scales its loss by its
// share of the global batch (1/N for equal parts) before backward, so the sum is the gradient of
// the global batch. The gradients travel in buckets of consecutive parameters of one dtype of up
// to `bucket_bytes`, one all-reduce each.
// A parameter without a gradient on this rank counts as zero there; it has a gradient afterwards
// when any rank had one (the ranks agree on that first, with one small all-reduce), so a
// parameter unused by one rank's slice cannot desynchronize the collectives that follow. Nothing
// happens in a job of one rank.
void reduce_gradients(Communicator& comm, const std::vector<Tensor>& params,
                      int64_t bucket_bytes = kGradientBucketBytes);

}  // namespace ml
