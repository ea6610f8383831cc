// Convolution, pooling and batch normalization on NCHW images (torch.nn.functional semantics).
#pragma once
#include "framework/backend.h"
#include "framework/tensor.h"

namespace ml {

// x [N,Cin,H,W], weight [Cout,Cin,kh,kw], bias [Cout] or undefined -> [N,Cout,Ho,Wo] with
// Ho = (H + 2*pad_h - kh) / stride_h + 1 (and likewise for the width).
Tensor conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias, Conv2dParams params);
Tensor conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias = Tensor(), int64_t stride = 1,
              int64_t padding = 0);

// Max over each window (padding never wins); the gradient goes to the first maximum of a window.
Tensor max_pool2d(const Tensor& x, Pool2dParams params);
// Square windows; stride 0 means stride = kernel (PyTorch's default).
Tensor max_pool2d(const Tensor& x, int64_t kernel, int64_t stride = 0, int64_t padding = 0);
// Mean over each window, padding counted as zeros (count_include_pad=True).
Tensor avg_pool2d(const Tensor& x, Pool2dParams params);
Tensor avg_pool2d(const Tensor& x, int64_t kernel, int64_t stride = 0, int64_t padding = 0);
// [N,C,H,W] -> [N,C]: pooling over the whole plane (adaptive pooling to 1x1, flattened).
Tensor global_max_pool2d(const Tensor& x);
Tensor global_avg_pool2d(const Tensor& x);

// Batch normalization over (N,H,W) of x [N,C,H,W]. weight/bias ([C]) may be undefined (no affine).
// training: normalizes with this batch's mean and biased variance and, when the running stats are
// defined, updates them in place: running = (1 - momentum) * running + momentum * batch, using the
// unbiased variance for running_var. Otherwise normalizes with the running stats (required then).
// With an activation (an op that ml::activation takes) the result is activation(batch_norm2d(...)),
// computed in training in the same passes over memory as the normalization, forward and backward
// (as oneDNN's and apex's batch norm fuse a ReLU).
Tensor batch_norm2d(const Tensor& x, const Tensor& running_mean, const Tensor& running_var, const Tensor& weight,
                    const Tensor& bias, bool training, double momentum = 0.1, double eps = 1e-5,
                    std::optional<UnaryOp> activation = std::nullopt);

}  // namespace ml
