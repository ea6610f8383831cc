// How the indexing kernels of both backends see a contiguous tensor along `dim`: as
// [outer, mid, inner] with mid = size(dim). Plain data, so it is passed to CUDA kernels by value.
#pragma once
#include <cstdint>

#include "framework/tensor.h"

namespace ml {

struct Split3 {
  int64_t outer = 1, mid = 1, inner = 1;
};

inline Split3 split_at(const Shape& shape, int64_t dim) {
  Split3 s;
  for (int64_t d = 0; d < static_cast<int64_t>(shape.size()); ++d) (d < dim ? s.outer : d == dim ? s.mid : s.inner) *= shape[d];
  return s;
}

}  // namespace ml
