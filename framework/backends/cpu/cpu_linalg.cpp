// Batched matrix products through OpenBLAS, or in single precision through muonlab's own AVX-512
// product where it runs (cpu_gemm.h). Transposed views are passed as transposed operands rather
// than copied.
#include <cblas.h>

#include <algorithm>
#include <cmath>

#include "framework/backends/cpu/cpu_backend.h"
#include "framework/backends/cpu/cpu_gemm.h"
#include "framework/backends/cpu/cpu_loops.h"
#include "framework/backends/gemm_layout.h"
#include "framework/parallel.h"

namespace ml {
using namespace cpu_loops;

namespace {

CBLAS_TRANSPOSE trans(const BlasMatrix& m) { return m.transposed ? CblasTrans : CblasNoTrans; }

// Whether T's products run muonlab's own kernel rather than OpenBLAS.
template <typename T>
bool own_gemm() {
  return std::is_same_v<T, float> && cpu_gemm::own_sgemm_runs();
}

// One product; outside a parallel region it may use every thread (OpenBLAS's or the own kernel's).
template <typename T>
void gemm_one(const BlasMatrix& oa, const BlasMatrix& ob, int64_t M, int64_t N, int64_t K, T alpha, const T* a,
              const T* b, T beta, T* c) {
  cpu_gemm::gemm(oa.transposed, ob.transposed, M, N, K, alpha, a, oa.ld, b, ob.ld, beta, c, N);
}

// Blocks of rows start at multiples of this many, a multiple of OpenBLAS's register tile on x86
// (16 rows for float and double on SkylakeX): only the last block can end in a partial tile.
constexpr int64_t kBlasTile = 16;

// Whether one OpenBLAS product should be split by rows across the threads
// (split_rows_across_threads) rather than threaded by OpenBLAS. (The own kernel shares its
// packed blocks between its threads itself.) Measured on two cores
// (experiments/results/gemm-threads-2026-12-04-2vcpu-xeon.md): where C is at least as tall as wide
// (the GPT's layers: C 768 x 65..512, K 128..768; 128^3 to 256^3), OpenBLAS's own threads gain
// 0.95-1.9x and blocks of rows 1.45-2.0x. Elsewhere OpenBLAS is level or ahead: C wider than tall;
// K much longer than C's rows, where every block packs most of the other operand again while
// OpenBLAS's threads share the packed panels; Newton-Schulz's sizes (768 x 768 x 768 and up); and
// tiny products, which OpenBLAS keeps on one thread.
bool split_rows_pays(int64_t M, int64_t N, int64_t K) {
  const int64_t multiply_adds = M * N * K;
  return use_threads(true) && !omp_in_parallel() && M >= N && M >= 2 * kBlasTile && K <= 2 * M &&
         multiply_adds >= (int64_t{1} << 20) && multiply_adds <= (int64_t{1} << 27);
}

// Whether a batch of products, each of `multiply_adds`, runs one product per thread with
// single-threaded BLAS (many small ones: attention heads, a stack of small Newton-Schulz matrices)
// rather than one after another: those the own kernel would run on one thread
// (cpu_gemm::kThreadedProductWork); larger ones are each threaded inside. Tiny batches are not
// worth waking the thread team for.
bool one_product_per_thread(int64_t batch, int64_t multiply_adds) {
  return batch > 1 && multiply_adds < cpu_gemm::kThreadedProductWork && batch * multiply_adds >= (int64_t{1} << 15);
}

// One product as one single-threaded BLAS call per thread, each computing a block of C's rows over
// all of K.
template <typename T>
void split_rows_across_threads(const BlasMatrix& oa, const BlasMatrix& ob, int64_t M, int64_t N, int64_t K, T alpha,
                               const T* a, const T* b, T beta, T* c) {
  const int64_t parts = std::min<int64_t>(omp_get_max_threads(), M / kBlasTile);
  const auto block_start = [&](int64_t p) { return p == parts ? M : p * M / parts / kBlasTile * kBlasTile; };
  parallel_for(parts, true, [&](int64_t p) {
    const int64_t first = block_start(p), rows = block_start(p + 1) - first;
    // Row `first` of A: a row in memory, or a column of the transposed matrix memory holds.
    gemm_one<T>(oa, ob, rows, N, K, alpha, a + first * (oa.transposed ? 1 : oa.ld), b, beta, c + first * N);
  });
}

// Rows [first, last) of the lower triangle of the n x n row-major matrix c, copied from the upper
// one in 64 x 64 blocks, so that the column reads stay in cache.
template <typename T>
void mirror_rows(T* c, int64_t n, int64_t first, int64_t last) {
  constexpr int64_t block = 64;
  for (int64_t i0 = first; i0 < last; i0 += block) {
    const int64_t i1 = std::min(last, i0 + block);
    for (int64_t j0 = 0; j0 < i1; j0 += block)
      for (int64_t i = i0; i < i1; ++i)
        for (int64_t j = j0; j < std::min(j0 + block, i); ++j) c[i * n + j] = c[j * n + i];
  }
}

// Copies the upper triangle of the n x n row-major matrix c onto its lower one. Row i copies i
// values, so the threads take bands of rows with equal shares of the triangle
// (cpu_gemm::triangle_band_start). (Tiles of 64 rows in order, four at two threads, left the second thread
// three quarters of the work; with the bands, syrk at two threads takes 0.93-0.97 of the time, n
// from 256 to 1024, paired in one process.)
template <typename T>
void mirror_upper_to_lower(T* c, int64_t n, bool parallel) {
  const bool threaded = use_threads(parallel && n * n >= (1 << 16));
  const int64_t bands = threaded ? omp_get_max_threads() : 1;
  parallel_for(bands, threaded, [&](int64_t b) {
    mirror_rows(c, n, cpu_gemm::triangle_band_start(n, b, bands), cpu_gemm::triangle_band_start(n, b + 1, bands));
  });
}

// C = alpha op(A) op(B)^T + beta D for a product known to be symmetric, where D is C itself (d
// null) or the n x n matrix at d: the upper triangle computed, the lower one its mirror. The own
// kernel does both (cpu_gemm::Part::Symmetric). BLAS has a routine for the upper triangle of B = A
// only (syrk); other pairs take the whole product there, and a separate D is copied into C first.
template <typename T>
void symmetric_product_into(const BlasMatrix& oa, const BlasMatrix& ob, int64_t n, int64_t k, T alpha, const T* a,
                            const T* b, T beta, const T* d, T* c, bool parallel) {
  if constexpr (std::is_same_v<T, float>)
    if (own_gemm<T>())
      return cpu_gemm::sgemm(oa.transposed, !ob.transposed, n, n, k, alpha, a, oa.ld, b, ob.ld, beta, c, n, true,
                             cpu_gemm::Part::Symmetric, d, n);
  if (d && beta != T(0)) std::copy(d, d + n * n, c);
  if (a != b || oa.transposed != ob.transposed || oa.ld != ob.ld)
    cpu_gemm::gemm(oa.transposed, !ob.transposed, n, n, k, alpha, a, oa.ld, b, ob.ld, beta, c, n);
  else if constexpr (std::is_same_v<T, float>)
    cblas_ssyrk(CblasRowMajor, CblasUpper, trans(oa), n, k, alpha, a, oa.ld, beta, c, n);
  else
    cblas_dsyrk(CblasRowMajor, CblasUpper, trans(oa), n, k, alpha, a, oa.ld, beta, c, n);
  mirror_upper_to_lower(c, n, parallel);
}

// An empty sum: BLAS leaves C untouched for K == 0, the product is zero, so C = beta * C.
template <typename T>
void scale_by_beta(T* c, int64_t count, double beta) {
  for (int64_t i = 0; i < count; ++i) c[i] = beta == 0.0 ? T(0) : static_cast<T>(beta) * c[i];
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
    if (K == 0) return scale_by_beta(pc, c.numel(), beta);
    // A few large products are each split by rows across the threads, or threaded by OpenBLAS.
    const bool per_thread = one_product_per_thread(batch, M * N * K);
    const bool split = !per_thread && !own_gemm<T>() && split_rows_pays(M, N, K);
    parallel_for(batch, per_thread, [&](int64_t i) {
      const T* ai = pa + i * oa.batch_stride;
      const T* bi = pb + i * ob.batch_stride;
      T* ci = pc + i * M * N;
      if (split)
        split_rows_across_threads<T>(oa, ob, M, N, K, static_cast<T>(alpha), ai, bi, static_cast<T>(beta), ci);
      else
        gemm_one<T>(oa, ob, M, N, K, static_cast<T>(alpha), ai, bi, static_cast<T>(beta), ci);
    });
  });
}

// The own kernel starts the product from the bias (cpu_gemm::sgemm's D, one row): the GPT's linear
// layers wrote their biases into outputs that the product then read, 0.7 ms of a 30 ms step.
void CpuBackend::gemm_add_rows(const Tensor& a, const Tensor& b, const Tensor& c, double alpha, const Tensor& bias,
                               GemmMath math) {
  if (c.dtype() != DType::Float32 || !cpu_gemm::own_sgemm_runs())
    return Backend::gemm_add_rows(a, b, c, alpha, bias, math);
  const int64_t M = c.size(1), N = c.size(2), K = a.size(2);
  const BlasMatrix oa = blas_matrix(a, "a"), ob = blas_matrix(b, "b");
  cpu_gemm::sgemm(oa.transposed, ob.transposed, M, N, K, static_cast<float>(alpha), a.data<float>(), oa.ld,
                  b.data<float>(), ob.ld, 1.0f, c.data<float>(), N, true, cpu_gemm::Part::All, bias.data<float>(), 0);
}

// Only where the batch runs one product per thread: a batch of larger products runs them one after
// another, each threaded inside, as separate calls would, and loses their cache reuse between one
// matrix's steps (Newton-Schulz on six 384 x 384 matrices: 1-6% slower stacked, on one thread or
// two; on four 384 x 128 at two threads, 1.35x faster).
bool CpuBackend::batched_products_pay(int64_t batch, int64_t multiply_adds) const {
  return use_threads(one_product_per_thread(batch, multiply_adds));
}

void CpuBackend::syrk(const Tensor& a, const Tensor& b, const Tensor& c, double alpha, double beta, const Tensor& d,
                      GemmMath) {
  const int64_t batch = a.size(0), n = a.size(1), k = a.size(2);
  if (batch == 0 || n == 0) return;
  const BlasMatrix oa = blas_matrix(a, "a"), ob = blas_matrix(b, "b");
  dispatch_floating(c.dtype(), "syrk", [&](auto tag) {
    using T = decltype(tag);
    T* pc = c.data<T>();
    const T* pd = d.defined() ? d.data<T>() : nullptr;
    if (k == 0) {
      if (pd) std::copy(pd, pd + c.numel(), pc);
      return scale_by_beta(pc, c.numel(), beta);
    }
    const bool per_thread = one_product_per_thread(batch, n * n * k / 2);
    parallel_for(batch, per_thread, [&](int64_t i) {
      T* ci = pc + i * n * n;
      symmetric_product_into<T>(oa, ob, n, k, static_cast<T>(alpha), a.data<T>() + i * oa.batch_stride,
                                b.data<T>() + i * ob.batch_stride, static_cast<T>(beta), pd ? pd + i * n * n : nullptr,
                                ci, !per_thread);
    });
  });
}

}  // namespace ml
