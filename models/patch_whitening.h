// The data-dependent filters of airbench's patch-whitening first layer (KellerJordan/cifar10-airbench,
// airbench94_muon.py, CifarNet.init_whiten; from tysam-code/hlb-CIFAR10).
#pragma once
#include <cstdint>

#include "framework/tensor.h"

namespace ml {

// The filters [2 C k k, C, k, k] of a k x k convolution (no padding) that whitens the k x k patches
// of `images` [N, C, H, W]. With Sigma = P^T P / count the uncentered covariance of every patch of
// every image, flattened as (c, y, x), and Sigma = V diag(lambda) V^T (eigenvalues ascending), the
// first C k k filters are the rows of V^T scaled by 1 / sqrt(lambda + eps), so that the filtered
// patches have covariance diag(lambda / (lambda + eps)) ~ I; the other C k k are their negations,
// which lets the activation after the layer pass both signs of each component. Float32, on the CPU.
Tensor patch_whitening_filters(const Tensor& images, int64_t kernel, double eps);

}  // namespace ml
