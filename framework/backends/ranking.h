// The order top-k ranks elements by, shared by the CPU and CUDA kernels so that both select and
// order exactly the same entries.
#pragma once
#include <cstdint>

#include "framework/random.h"  // ML_HOST_DEVICE

namespace ml {

// Whether (a at index i) ranks before (b at index j): NaN ranks above every number (as in
// torch.topk), then larger values first, and equal values (NaNs among themselves, -0 and +0) go
// to the lower index. With distinct indices this is a strict total order, so the ranks of a row
// are a permutation of 0..n-1.
template <typename T>
ML_HOST_DEVICE inline bool ranks_before(T a, int64_t i, T b, int64_t j) {
  const bool a_nan = a != a, b_nan = b != b;
  if (a_nan || b_nan) return a_nan && (!b_nan || i < j);
  return a > b || (a == b && i < j);
}

}  // namespace ml
