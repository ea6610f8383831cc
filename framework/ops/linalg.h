// Matrix products.
#pragma once
#include "framework/tensor.h"

namespace ml {

// torch.matmul: 1-D operands are promoted to matrices; leading (batch) dims broadcast.
Tensor matmul(const Tensor& a, const Tensor& b);

}  // namespace ml
