// Choosing which slices (rows or columns) of a matrix Dion2 updates.
#pragma once
#include <cstdint>

#include "framework/random.h"
#include "framework/tensor.h"

namespace ml {

// Indices of the k largest entries of the 1-D `scores` (ties: lower index first; NaN counts as
// the largest), in ascending index order, as an Int64 tensor computed on scores' device (no host
// round trip). Ascending order keeps Dion2's selected slices in matrix order.
Tensor top_k_indices(const Tensor& scores, int64_t k);

// The number of slices Dion2 selects: max(1, ceil(fraction * slices)).
int64_t selection_count(int64_t slices, double fraction);

// Slice scores along `dim` (0: rows, 1: columns) of a 2-D matrix: each slice's L1 norm.
Tensor l1_slice_scores(const Tensor& matrix, int64_t dim);
// Uniform random scores (a random selection), drawn from `generator`.
Tensor random_slice_scores(const Tensor& matrix, int64_t dim, Generator& generator);

}  // namespace ml
