// The register tile of muonlab's own float32 product (cpu_gemm.cpp), shared with the kernels that
// keep small products' operands in its layout themselves (the blocked attention's per-head
// products, cpu_attention.cpp) and would lose to sgemm's packing and blocking on 64 x 64 x 32.
// AVX-512 code: call it only where cpu_gemm::own_sgemm_runs().
#pragma once
#include <algorithm>
#include <cstdint>
#include <limits>

#if defined(__x86_64__)
#include <immintrin.h>
#define MUONLAB_OWN_SGEMM 1
#endif

namespace ml::cpu_gemm {

// The register tile: 12 rows of C, each two 16-float vectors wide: 24 accumulators, two vectors of
// B and one broadcast element of A in 27 of the 32 zmm registers. Each step along K loads 2
// vectors and 12 scalars for 24 FMAs, so the FMA pipes, not the loads, set the pace.
constexpr int64_t kTileRows = 12;  // MR
constexpr int64_t kTileCols = 32;  // NR

// How a tile's A(r, kk) lies in memory: rows lda apart (a[r * lda + kk], a row-major A read in
// place; rows past the tile's live ones read its last row again), or columns lda apart
// (a[kk * lda + r]: a transposed A, or one packed kTileRows to a step; the tile reads kRows entries
// of each column whatever its live rows).
enum class ALayout { Rows, Columns };

#if MUONLAB_OWN_SGEMM

inline __attribute__((target("arch=x86-64-v4"))) __mmask16 lanes_below(int64_t count) {
  return count >= 16 ? __mmask16(0xFFFF) : count <= 0 ? __mmask16(0) : __mmask16((1u << count) - 1);
}

// The `diagonal` of a tile that lies on no symmetric product's diagonal.
constexpr int64_t kNoDiagonal = std::numeric_limits<int64_t>::min() / 2;

// acc = A_tile B over `depth` steps, B(kk, j) = b[kk * ldb + j] for j < kColumns (read whole: a
// packed panel, or rows with room to kColumns values), then for the tile's `rows` x `cols` live part
// C = alpha s_r acc + (first ? beta C0 : C), where s_r is row_scale[r] (kRowScaled) or 1, C0 is C
// itself or, where init is given, the rows at init, init_ld apart (0: the one row in every row, a
// bias; C is not read), and a first block with beta == 0 never reads C0. kRows < kTileRows serves
// a tile of few rows (the last of 64 rows is 4, attention's blocks are 8) with fewer FMAs;
// kColumns = 16, one vector a row, a product whose last columns are few (attention's causal scores).
// kOnDiagonal, a tile on a symmetric product's diagonal: `diagonal` is its first row's index less
// its first column's, and row r neither reads nor writes its columns left of diagonal + r (the
// lower triangle, which that product writes as a mirror of the upper one). kAskAhead
// (ALayout::Rows): the tile asks for the next tile's next_rows rows of A (at next_a, lda apart) over
// the same depth while it runs, a cache line every step: where A was just written by the other
// core, its lines arrive late when the next tile asks for them itself (see cpu_gemm.cpp's
// block_times_panels).
template <ALayout kLayout, int kRows, bool kRowScaled = false, int kColumns = kTileCols, bool kOnDiagonal = false,
          bool kAskAhead = false>
inline __attribute__((target("arch=x86-64-v4"))) void tile_kernel(
    int64_t depth, const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc, int64_t rows,
    int64_t cols, float alpha, float beta, bool first, const float* row_scale = nullptr, const float* init = nullptr,
    int64_t init_ld = 0, int64_t diagonal = kNoDiagonal, const float* next_a = nullptr, int64_t next_rows = 0) {
  static_assert(kColumns == 16 || kColumns == 32, "one or two vectors a row");
  constexpr int kVectors = kColumns / 16;
  const float* a_rows[kRows];
  for (int r = 0; r < kRows; ++r) a_rows[r] = a + std::min<int64_t>(r, rows - 1) * lda;
  __m512 acc[kRows][kVectors];
#pragma GCC unroll 12
  for (int r = 0; r < kRows; ++r)
#pragma GCC unroll 2
    for (int v = 0; v < kVectors; ++v) acc[r][v] = _mm512_setzero_ps();
  const int64_t row_lines = (depth + 15) / 16;  // cache lines of a row of A over the depth
  int64_t next_row = 0, next_line = 0;
  for (int64_t kk = 0; kk < depth; ++kk) {
    __m512 b_row[kVectors];
#pragma GCC unroll 2
    for (int v = 0; v < kVectors; ++v) b_row[v] = _mm512_loadu_ps(b + kk * ldb + 16 * v);
    if constexpr (kAskAhead) {
      static_assert(kLayout == ALayout::Rows, "asks for rows of A");
      if (next_row < next_rows) {
        _mm_prefetch(reinterpret_cast<const char*>(next_a + next_row * lda + 16 * next_line), _MM_HINT_T1);
        if (++next_line == row_lines) {
          next_line = 0;
          ++next_row;
        }
      }
    }
#pragma GCC unroll 12
    for (int r = 0; r < kRows; ++r) {
      const __m512 a_value = _mm512_set1_ps(kLayout == ALayout::Rows ? a_rows[r][kk] : a[kk * lda + r]);
#pragma GCC unroll 2
      for (int v = 0; v < kVectors; ++v) acc[r][v] = _mm512_fmadd_ps(a_value, b_row[v], acc[r][v]);
    }
  }
  const bool read_c = !first || beta != 0.0f;
  const __m512 c_scale = first ? _mm512_set1_ps(beta) : _mm512_set1_ps(1.0f);
#pragma GCC unroll 12
  for (int r = 0; r < kRows; ++r) {
    if (r >= rows) break;
    float* row = c + r * ldc;
    const float* added = first && init ? init + r * init_ld : row;
    const __m512 scale = _mm512_set1_ps(kRowScaled ? alpha * row_scale[r] : alpha);
#pragma GCC unroll 2
    for (int v = 0; v < kVectors; ++v) {
      const __mmask16 mask = kOnDiagonal ? __mmask16(lanes_below(cols - 16 * v) & ~lanes_below(diagonal + r - 16 * v))
                                         : lanes_below(cols - 16 * v);
      __m512 value = _mm512_mul_ps(scale, acc[r][v]);
      if (read_c) value = _mm512_fmadd_ps(c_scale, _mm512_maskz_loadu_ps(mask, added + 16 * v), value);
      _mm512_mask_storeu_ps(row + 16 * v, mask, value);
    }
  }
}

#endif

}  // namespace ml::cpu_gemm
