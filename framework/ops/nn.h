// Neural-network functional ops (torch.nn.functional).
#pragma once
#include "framework/tensor.h"

namespace ml {
}  // namespace ml
