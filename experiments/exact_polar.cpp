#include "experiments/exact_polar.h"

#include <cmath>
#include <stdexcept>
#include <string>

#include "framework/ops.h"

namespace ml {

Tensor exact_polar(const Tensor& g) {
  if (g.dim() != 2) throw std::invalid_argument("exact_polar: expected a 2-D matrix, got " + shape_str(g.shape()));
  NoGradGuard no_grad;
  const bool tall = g.size(0) > g.size(1);
  const Tensor small = (tall ? g.t() : g).to(cpu()).to(DType::Float64).contiguous();
  const int64_t k = small.size(0);
  const SymmetricEigen eig = symmetric_eigen(matmul(small, small.t()).to_vector<double>(), k);
  if (!(eig.values.front() > eig.values.back() * 1e-15))
    throw std::runtime_error("exact_polar: the " + shape_str(g.shape()) +
                             " matrix is (numerically) rank deficient; its polar factor is not unique");
  // (S S^T)^(-1/2) = V^T diag(lambda^(-1/2)) V with the eigenvectors as the rows of V.
  std::vector<double> scaled_rows = eig.vectors;
  for (int64_t i = 0; i < k; ++i)
    for (int64_t j = 0; j < k; ++j) scaled_rows[i * k + j] /= std::sqrt(eig.values[i]);
  const Tensor v = Tensor::from_vector(eig.vectors, {k, k});
  const Tensor inverse_sqrt = matmul(v.t(), Tensor::from_vector(scaled_rows, {k, k}));
  const Tensor polar = matmul(inverse_sqrt, small);
  return tall ? polar.t().contiguous() : polar;
}

}  // namespace ml
