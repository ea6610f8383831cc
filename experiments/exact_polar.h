// The exact polar factor, the yardstick of the ortho benchmark: for G = U S V^T (thin SVD),
// polar(G) = U V^T = (G G^T)^(-1/2) G on the small side. Computed in float64 through a symmetric
// eigendecomposition of the Gram matrix (Householder tridiagonalization, then implicit QL with
// Wilkinson shifts). A reference, not a fast path: never call it inside a timed region.
#pragma once
#include <vector>

#include "framework/symmetric_eigen.h"
#include "framework/tensor.h"

namespace ml {

// polar(G) of a 2-D CPU tensor of any floating dtype, as a contiguous float64 tensor of G's shape.
// Throws std::runtime_error when G is rank deficient (the polar factor is not unique then).
Tensor exact_polar(const Tensor& g);

}  // namespace ml
