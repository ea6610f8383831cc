// Reductions over any set of axes (an empty list means all axes).
#pragma once
#include <utility>
#include <vector>

#include "framework/backend.h"
#include "framework/tensor.h"

namespace ml {

Tensor sum(const Tensor& x, const std::vector<int64_t>& axes = {}, bool keepdim = false);
Tensor mean(const Tensor& x, const std::vector<int64_t>& axes = {}, bool keepdim = false);
// sum(x * x, axes) in one pass over x (no x * x temporary), rounded the same way: each square in
// x's dtype, the sum in double.
Tensor sum_of_squares(const Tensor& x, const std::vector<int64_t>& axes = {}, bool keepdim = false);
// Largest value over the axes; the gradient is shared equally among tied maxima (torch.amax).
Tensor amax(const Tensor& x, const std::vector<int64_t>& axes = {}, bool keepdim = false);
Tensor amin(const Tensor& x, const std::vector<int64_t>& axes = {}, bool keepdim = false);
// Values and Int64 indices along one dim (torch.max(x, dim)); the gradient goes to the index.
std::pair<Tensor, Tensor> max(const Tensor& x, int64_t dim, bool keepdim = false);
std::pair<Tensor, Tensor> min(const Tensor& x, int64_t dim, bool keepdim = false);
Tensor argmax(const Tensor& x, int64_t dim, bool keepdim = false);
// The k largest entries along dim (torch.topk(x, k, dim)): values and Int64 indices, shaped like x
// with size k along dim, 0 <= k <= x.size(dim). Ranking: NaN above every number, then larger
// values first; equal values (and NaNs among themselves) go to the lower index. ByValue lists the
// k entries in that rank order, ByIndex in the order they appear in x (the k-subset sorted by
// index, which keeps gathers by these indices monotone). The gradient of the values goes to the
// selected positions of x. Runs on x's device (no host copies), floating dtypes only.
std::pair<Tensor, Tensor> topk(const Tensor& x, int64_t k, int64_t dim = -1, TopkOrder order = TopkOrder::ByValue);
// Variance with Bessel's correction by default (torch.var's correction=1).
Tensor var(const Tensor& x, const std::vector<int64_t>& axes = {}, bool keepdim = false, int64_t correction = 1);
// Euclidean (Frobenius) norm over the axes.
Tensor norm(const Tensor& x, const std::vector<int64_t>& axes = {}, bool keepdim = false);

}  // namespace ml
