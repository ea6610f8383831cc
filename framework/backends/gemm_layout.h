// How a [B, R, C] matrix view maps onto a BLAS operand, shared by the CPU (OpenBLAS) and CUDA
// (cuBLAS) backends: a transposed view is passed as a transposed operand instead of being copied.
#pragma once
#include <algorithm>
#include <stdexcept>
#include <string>

#include "framework/tensor.h"

namespace ml {

struct BlasMatrix {
  bool transposed;       // memory holds the matrix's transpose in row-major order
  int64_t ld;            // leading dimension (row stride of what memory holds)
  int64_t batch_stride;  // elements between consecutive matrices (0 broadcasts one matrix)
};

// The view must have a unit stride along its columns (row-major) or along its rows (a transpose).
inline BlasMatrix blas_matrix(const Tensor& t, const char* which) {
  const int64_t rows = t.size(1), cols = t.size(2);
  const int64_t row_stride = t.strides()[1], col_stride = t.strides()[2];
  // A single row or column has a free choice of leading dimension; BLAS only needs ld >= extent.
  if (col_stride == 1 || cols == 1)
    return {false, rows == 1 ? std::max<int64_t>(cols, 1) : std::max(row_stride, cols), t.strides()[0]};
  if (row_stride == 1 || rows == 1)
    return {true, cols == 1 ? std::max<int64_t>(rows, 1) : std::max(col_stride, rows), t.strides()[0]};
  throw std::invalid_argument(std::string("gemm: operand ") + which + " needs a unit stride in one of its last two dims");
}

}  // namespace ml
