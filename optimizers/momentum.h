// Momentum in the two forms the papers write it. Both update the buffer in place and return the
// direction to use; without Nesterov that is the buffer itself (do not modify it then).
#pragma once
#include "framework/tensor.h"

namespace ml {

// Muon's form (KellerJordan/Muon): M <- beta M + (1 - beta) G; returns (1 - beta) G + beta M
// with Nesterov, else M. Without Nesterov it is also AdamW's first moment and Lion's average.
Tensor lerp_momentum(Tensor& momentum, const Tensor& grad, double beta, bool nesterov);
// PyTorch SGD's form (also RMNP's): M <- mu M + G; returns G + mu M with Nesterov, else M.
// The two forms differ by the factor (1 - beta), which an orthogonalizing optimizer removes.
Tensor accumulate_momentum(Tensor& momentum, const Tensor& grad, double mu, bool nesterov);

}  // namespace ml
