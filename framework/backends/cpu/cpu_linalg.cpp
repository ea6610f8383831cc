// Batched matrix products through OpenBLAS. Transposed views are passed to BLAS as transposed
// operands rather than copied.
#include <cblas.h>

#include "framework/backends/cpu/cpu_backend.h"
#include "framework/backends/cpu/cpu_loops.h"
#include "framework/backends/gemm_layout.h"
#include "framework/parallel.h"

namespace ml {
using namespace cpu_loops;

namespace {

CBLAS_TRANSPOSE trans(const BlasMatrix& m) { return m.transposed ? CblasTrans : CblasNoTrans; }

template <typename T>
void gemm_one(const BlasMatrix& oa, const BlasMatrix& ob, int64_t M, int64_t N, int64_t K, T alpha, const T* a,
              const T* b, T beta, T* c) {
  if constexpr (std::is_same_v<T, float>)
    cblas_sgemm(CblasRowMajor, trans(oa), trans(ob), M, N, K, alpha, a, oa.ld, b, ob.ld, beta, c, N);
  else
    cblas_dgemm(CblasRowMajor, trans(oa), trans(ob), M, N, K, alpha, a, oa.ld, b, ob.ld, beta, c, N);
}

}  // namespace

// Always exact: like PyTorch's allow_tf32 on the CPU, the run's matmul precision has no effect here.
void CpuBackend::gemm(const Tensor& a, const Tensor& b, const Tensor& c, double alpha, double beta, GemmMath) {
  const int64_t batch = c.size(0), M = c.size(1), N = c.size(2), K = a.size(2);
  if (M == 0 || N == 0) return;
  const BlasMatrix oa = blas_matrix(a, "a"), ob = blas_matrix(b, "b");
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
    // Tiny batches are not worth waking the thread team for.
    const int64_t work = batch * M * N * K;
    const bool per_thread = batch > 1 && M * N * K <= (1 << 21) && work >= (1 << 15);
    parallel_for(batch, per_thread, [&](int64_t i) {
      gemm_one<T>(oa, ob, M, N, K, static_cast<T>(alpha), pa + i * oa.batch_stride, pb + i * ob.batch_stride,
                  static_cast<T>(beta), pc + i * M * N);
    });
  });
}

}  // namespace ml
