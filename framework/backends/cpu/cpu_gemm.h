// muonlab's own single-precision matrix product, for processors with AVX-512.
//
// OpenBLAS chooses its kernels by processor model, and where it is pinned to an older set (this
// project's VMs set OPENBLAS_CORETYPE=Haswell: OpenBLAS 0.3.21 misbehaves on newer models) it runs
// 8-lane AVX2 FMAs. A processor with two 512-bit FMA pipes (AMD Zen 5) does twice that work per
// cycle: 233 against 116 GFLOP/s on one core of this project's EPYC VMs, where OpenBLAS's sgemm
// reaches 110. This product is the textbook blocked GEMM (Goto & van de Geijn, "Anatomy of
// high-performance matrix multiplication", 2008; the BLIS loop order): cache-sized blocks of op(A)
// and op(B), and a 12 x 32 register tile of C updated by 24 FMAs per step along K. B is packed
// into panels; a row-major A is read in place (its rows are the tile's rows), a transposed one
// packed. It runs where cpu_capability() chose AVX-512; everything else (double, other processors,
// MUONLAB_CPU_CAPABILITY=default) stays with OpenBLAS, which is also the reference its test holds
// it to.
#pragma once
#include <cmath>
#include <cstdint>
#include <string>

namespace ml::cpu_gemm {

// Whether sgemm below runs here: the processor has AVX-512 and cpu_capability() chose it.
bool own_sgemm_runs();
// What runs float32 products, for benchmark rows: "muonlab-avx512" or "openblas".
std::string float32_gemm_name();

// Which part of C to compute: all of it, or, for a product known to be symmetric (A A^T, or P A for
// commuting symmetric P and A; C square), only the tiles that touch the upper triangle, j >= i,
// after which the strictly lower triangle is written as their mirror: C comes out exactly symmetric
// for half the multiply-adds.
enum class Part { All, Symmetric };

// Where band `band` of `bands` starts when bands of rows share a triangle of an n x n matrix
// equally (row i holds i elements of the lower one): row n sqrt(band / bands). The threads mirror a
// symmetric product's upper triangle onto its lower one in these bands, here and in cpu_linalg.cpp.
inline int64_t triangle_band_start(int64_t n, int64_t band, int64_t bands) {
  return static_cast<int64_t>(std::lround(static_cast<double>(n) * std::sqrt(static_cast<double>(band) / bands)));
}

// From this many multiply-adds (about 25 us of one core) sgemm shares a product between the threads.
// Below, the threads cost more than they save where products follow one another and each reads the
// last one's result, half of it from the other core's cache: Newton-Schulz on single 128 x 128 and
// 384 x 128 matrices took 0.69-0.72 of the time at two threads with 2^22 rather than 2^20 here
// (2^23 slowed the GPT's 768 x 128 x 65 head by 1.4x; experiments/results/
// cpu-ops-2026-12-05-2vcpu-epyc-session28.md). The CPU backend runs a batch of smaller products one
// per thread instead (cpu_linalg.cpp).
constexpr int64_t kThreadedProductWork = int64_t{1} << 22;

// C = alpha op(A) op(B) + beta D for row-major A (m x k, or k x m when trans_a), B (k x n, or
// n x k when trans_b) and C (m x n) with leading dimensions lda, ldb, ldc, where D is C itself or,
// where d is given, the m x n matrix at d with rows ldd apart: ldd = 0 adds the one row d to every
// row (a linear layer's bias), another D starts a product from it (Newton-Schulz's polynomial
// c A A^T + b A), to the bits of a C that held D, without writing D into C first. beta == 0 never
// reads D (as BLAS: NaNs there do not propagate). `parallel` spreads the tiles over the OpenMP
// threads (inside a parallel region it runs on the calling thread). Each element of C is summed in
// the same order whatever the threads, so results do not depend on their number. Part::Symmetric
// needs m == n. Only where own_sgemm_runs().
void sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
           const float* b, int64_t ldb, float beta, float* c, int64_t ldc, bool parallel, Part part = Part::All,
           const float* d = nullptr, int64_t ldd = 0);

// The CPU backend's product, and the one place that chooses what runs it: sgemm above where
// own_sgemm_runs(), else BLAS (always for double). The same arguments as sgemm; outside a parallel
// region it may use every thread, inside one it runs on the calling thread.
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
          const float* b, int64_t ldb, float beta, float* c, int64_t ldc);
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha, const double* a, int64_t lda,
          const double* b, int64_t ldb, double beta, double* c, int64_t ldc);

}  // namespace ml::cpu_gemm
