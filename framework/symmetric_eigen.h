// The symmetric eigendecomposition in float64 on the host (Householder tridiagonalization, then
// implicit QL with Wilkinson shifts): for small matrices that need exact answers, such as the exact
// polar factor of the ortho benchmark and the CNN's patch-whitening filters.
#pragma once
#include <cstdint>
#include <vector>

namespace ml {

// Eigenvalues (ascending) and orthonormal eigenvectors (row i belongs to value i) of a symmetric
// n x n matrix given row-major. Throws std::runtime_error if the QL iteration does not converge.
struct SymmetricEigen {
  std::vector<double> values;
  std::vector<double> vectors;  // n x n, row-major, one eigenvector per row
};
SymmetricEigen symmetric_eigen(std::vector<double> matrix, int64_t n);

}  // namespace ml
