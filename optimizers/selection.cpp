#include "optimizers/selection.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "framework/ops.h"

namespace ml {

Tensor top_k_indices(const Tensor& scores, int64_t k) {
  if (scores.dim() != 1) throw std::invalid_argument("top_k_indices: scores must be 1-D, got " + shape_str(scores.shape()));
  const int64_t n = scores.numel();
  if (k < 1 || k > n)
    throw std::invalid_argument("top_k_indices: k = " + std::to_string(k) + " outside [1, " + std::to_string(n) + "]");
  return topk(scores, k, 0, TopkOrder::ByIndex).second;
}

int64_t selection_count(int64_t slices, double fraction) {
  if (!(fraction > 0.0 && fraction <= 1.0))
    throw std::invalid_argument("dion2: fraction must lie in (0, 1], got " + std::to_string(fraction));
  // The 1e-9 keeps a product like 0.1 * 30 = 3.0000000000000004 from rounding up to 4.
  const auto k = static_cast<int64_t>(std::ceil(fraction * static_cast<double>(slices) - 1e-9));
  return std::clamp<int64_t>(k, 1, slices);
}

Tensor l1_slice_scores(const Tensor& matrix, int64_t dim) { return sum(abs(matrix), {1 - dim}); }

Tensor random_slice_scores(const Tensor& matrix, int64_t dim, Generator& generator) {
  return rand({matrix.size(dim)}, 0.0, 1.0, matrix.dtype(), matrix.device(), generator);
}

}  // namespace ml
