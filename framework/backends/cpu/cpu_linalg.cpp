// Batched matrix products through OpenBLAS. Transposed views are passed to BLAS as transposed
// operands rather than copied.
#include <cblas.h>

#include <stdexcept>

#include "framework/backends/cpu/cpu_backend.h"
#include "framework/backends/cpu/cpu_loops.h"
#include "framework/parallel.h"

namespace ml {
using namespace cpu_loops;

namespace {

struct BlasOperand {
  CBLAS_TRANSPOSE trans;
  int64_t ld;
  int64_t batch_stride;
};

// A [B, R, C] view whose matrices have unit stride along C (row-major) or along R (a transpose).
BlasOperand blas_operand(const Tensor& t, const char* which) {
  const int64_t rows = t.size(1), cols = t.size(2);
  const int64_t s_row = t.strides()[1], s_col = t.strides()[2];
  if (s_col == 1 || cols == 1) return {CblasNoTrans, rows == 1 ? std::max<int64_t>(cols, 1) : std::max(s_row, cols), t.strides()[0]};
  if (s_row == 1 || rows == 1) return {CblasTrans, cols == 1 ? std::max<int64_t>(rows, 1) : std::max(s_col, rows), t.strides()[0]};
  throw std::invalid_argument(std::string("gemm: operand ") + which + " needs a unit stride in one of its last two dims");
}

template <typename T>
void gemm_one(const BlasOperand& oa, const BlasOperand& ob, int64_t M, int64_t N, int64_t K, T alpha, const T* a,
              const T* b, T beta, T* c) {
  if constexpr (std::is_same_v<T, float>)
    cblas_sgemm(CblasRowMajor, oa.trans, ob.trans, M, N, K, alpha, a, oa.ld, b, ob.ld, beta, c, N);
  else
    cblas_dgemm(CblasRowMajor, oa.trans, ob.trans, M, N, K, alpha, a, oa.ld, b, ob.ld, beta, c, N);
}

}  // namespace

void CpuBackend::gemm(const Tensor& a, const Tensor& b, const Tensor& c, double alpha, double beta) {
  const int64_t batch = c.size(0), M = c.size(1), N = c.size(2), K = a.size(2);
  if (M == 0 || N == 0) return;
  const BlasOperand oa = blas_operand(a, "a"), ob = blas_operand(b, "b");
  dispatch_floating(c.dtype(), "gemm", [&](auto tag) {
    using T = decltype(tag);
    const T* pa = a.data<T>();
    const T* pb = b.data<T>();
    T* pc = c.data<T>();
    if (K == 0) {  // BLAS leaves C untouched for K == 0; the product is empty, so C = beta * C
      for (int64_t i = 0; i < c.numel(); ++i) pc[i] = beta == 0.0 ? T(0) : static_cast<T>(beta) * pc[i];
      return;
    }
    // Many small products (attention heads) run one per thread with single-threaded BLAS; a few
    // large ones let OpenBLAS use every thread inside each product.
    const bool per_thread = batch > 1 && M * N * K <= (1 << 21);
#pragma omp parallel for schedule(static) if (per_thread)
    for (int64_t i = 0; i < batch; ++i)
      gemm_one<T>(oa, ob, M, N, K, static_cast<T>(alpha), pa + i * oa.batch_stride, pb + i * ob.batch_stride,
                  static_cast<T>(beta), pc + i * M * N);
  });
}

}  // namespace ml
