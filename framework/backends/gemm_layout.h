// How a [B, R, C] matrix view maps onto a BLAS operand, shared by the CPU (OpenBLAS) and CUDA
// (cuBLAS) backends: a transposed view is passed as a transposed operand instead of being copied.
#pragma once
#include <algorithm>
#include <optional>
#include <stdexcept>
#include <string>

#include "framework/tensor.h"

namespace ml {

struct BlasMatrix {
  bool transposed;       // memory holds the matrix's transpose in row-major order
  int64_t ld;            // leading dimension (row stride of what memory holds)
  int64_t batch_stride;  // elements between consecutive matrices (0 broadcasts one matrix)
};

// How BLAS reads a rows x cols matrix with these strides, or nothing when it cannot read the view
// as it is. BLAS needs a unit stride along one dim and, along the other, a leading dimension of at
// least that dim's extent: an expanded view (stride 0) or overlapping rows would make BLAS read
// distinct elements where the view repeats one, so such views must be made contiguous first.
inline std::optional<BlasMatrix> blas_layout(int64_t rows, int64_t cols, int64_t row_stride, int64_t col_stride,
                                             int64_t batch_stride) {
  if (rows == 0 || cols == 0) return BlasMatrix{false, std::max<int64_t>(cols, 1), batch_stride};  // nothing is read
  // A single row or column has a free choice of leading dimension; BLAS only needs ld >= extent.
  if ((col_stride == 1 || cols == 1) && (rows == 1 || row_stride >= cols))
    return BlasMatrix{false, rows == 1 ? cols : row_stride, batch_stride};
  if ((row_stride == 1 || rows == 1) && (cols == 1 || col_stride >= rows))
    return BlasMatrix{true, cols == 1 ? rows : col_stride, batch_stride};
  return std::nullopt;
}

inline BlasMatrix blas_matrix(const Tensor& t, const char* which) {
  const std::optional<BlasMatrix> m = blas_layout(t.size(1), t.size(2), t.strides()[1], t.strides()[2], t.strides()[0]);
  if (!m)
    throw std::invalid_argument(std::string("gemm: operand ") + which +
                                " needs a unit stride in one of its last two dims and no repeated rows or columns");
  return *m;
}

}  // namespace ml
