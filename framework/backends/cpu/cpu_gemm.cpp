#include "framework/backends/cpu/cpu_gemm.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <type_traits>
#include <utility>

#include "framework/backends/cpu/cpu_capability.h"
#include "framework/backends/cpu/cpu_gemm_tile.h"

namespace ml::cpu_gemm {

std::string float32_gemm_name() { return own_sgemm_runs() ? "muonlab-avx512" : "openblas"; }

namespace {
CBLAS_TRANSPOSE blas_transpose(bool transposed) { return transposed ? CblasTrans : CblasNoTrans; }
}  // namespace

void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
          const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (own_sgemm_runs()) return sgemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, true);
  cblas_sgemm(CblasRowMajor, blas_transpose(trans_a), blas_transpose(trans_b), m, n, k, alpha, a, lda, b, ldb, beta, c,
              ldc);
}
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha, const double* a, int64_t lda,
          const double* b, int64_t ldb, double beta, double* c, int64_t ldc) {
  cblas_dgemm(CblasRowMajor, blas_transpose(trans_a), blas_transpose(trans_b), m, n, k, alpha, a, lda, b, ldb, beta, c,
              ldc);
}

#if MUONLAB_OWN_SGEMM

bool own_sgemm_runs() {
#if defined(__AVX512F__)
  return true;  // the whole build is AVX-512 code
#else
  return cpu_capability() == CpuCapability::Avx512;
#endif
}

namespace {

// The blocks: a kTileCols-wide panel of B over kDepth steps (32 KiB) stays in the 48 KiB L1 while
// the tile loop runs down a block of A (up to kBlockRows x kDepth, 240 KiB, in the 1 MiB L2); the
// block of B (kDepth x up to kBlockCols, 2 MiB) is read from L2/L3 once per block of A.
constexpr int64_t kDepth = 256;       // KC
constexpr int64_t kBlockRows = 240;   // MC, a multiple of kTileRows
constexpr int64_t kBlockCols = 2048;  // NC, a multiple of kTileCols

// The most elements of A for which column shares ask for its rows ahead (run_column_share).
constexpr int64_t kAskAheadA = int64_t{1} << 17;

// Packing buffers that live as long as their thread (one for blocks of A, one for B), so that no
// product pays for fresh pages.
float* thread_buffer(int slot, int64_t floats) {
  struct Buffer {
    float* data = nullptr;
    int64_t floats = 0;
    ~Buffer() { std::free(data); }
  };
  thread_local Buffer buffers[2];
  Buffer& buffer = buffers[slot];
  if (floats > buffer.floats) {
    std::free(buffer.data);
    buffer.data = static_cast<float*>(std::aligned_alloc(64, (floats * sizeof(float) + 63) / 64 * 64));
    buffer.floats = buffer.data ? floats : 0;
    if (!buffer.data) throw std::bad_alloc();
  }
  return buffer.data;
}
constexpr int kSlotA = 0, kSlotB = 1;

// One operand as the product sees it: element (row, col) of op(X).
struct Operand {
  const float* data;
  int64_t ld;
  bool transposed;  // memory holds op(X)^T
};

// Rows [row0, row0 + rows) and steps [k0, k0 + depth) of a transposed op(A) (a step's rows lie side
// by side in memory) as panels of kTileRows rows, each stored step by step (kTileRows values a
// step), the rows past the end zero. (A row-major A is read in place: block_times_panels.)
void pack_transposed_a(const Operand& a, int64_t row0, int64_t rows, int64_t k0, int64_t depth, float* packed) {
  for (int64_t panel = 0; panel < rows; panel += kTileRows) {
    const int64_t live = std::min(kTileRows, rows - panel);
    float* out = packed + panel * depth;
    for (int64_t kk = 0; kk < depth; ++kk) {
      const float* in = a.data + (k0 + kk) * a.ld + row0 + panel;
      for (int64_t r = 0; r < live; ++r) out[kk * kTileRows + r] = in[r];
      for (int64_t r = live; r < kTileRows; ++r) out[kk * kTileRows + r] = 0.0f;
    }
  }
}

// out[i * out_stride + r] = rows[r][i] for 16 rows of 16 values (packing a transposed B, mirroring
// a symmetric product): four rounds of two-vector shuffles (what unpcklps/unpckhps,
// unpcklpd/unpckhpd and shuff32x4 do), rows interleaved value by value, then pair by pair, then by
// quarters twice.
__attribute__((target("arch=x86-64-v4"))) void transpose_16x16(const float* const (&rows)[16], float* out,
                                                               int64_t out_stride) {
  typedef float Vector __attribute__((vector_size(64)));
  typedef int32_t Indices __attribute__((vector_size(64)));
  constexpr Indices kValuesLow{0, 16, 1, 17, 4, 20, 5, 21, 8, 24, 9, 25, 12, 28, 13, 29};
  constexpr Indices kValuesHigh{2, 18, 3, 19, 6, 22, 7, 23, 10, 26, 11, 27, 14, 30, 15, 31};
  constexpr Indices kPairsLow{0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29};
  constexpr Indices kPairsHigh{2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31};
  constexpr Indices kEvenQuarters{0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27};
  constexpr Indices kOddQuarters{4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31};
  Vector r[16], t[16];
  for (int i = 0; i < 16; ++i) std::memcpy(&r[i], rows[i], sizeof(Vector));
  for (int i = 0; i < 16; i += 2) {  // t[i]: rows i, i + 1 at steps 4q, 4q + 1; t[i + 1]: at 4q + 2, 4q + 3
    t[i] = __builtin_shuffle(r[i], r[i + 1], kValuesLow);
    t[i + 1] = __builtin_shuffle(r[i], r[i + 1], kValuesHigh);
  }
  for (int i = 0; i < 16; i += 4) {  // r[i + c]: rows i .. i + 3 at step 4q + c in quarter q
    r[i] = __builtin_shuffle(t[i], t[i + 2], kPairsLow);
    r[i + 1] = __builtin_shuffle(t[i], t[i + 2], kPairsHigh);
    r[i + 2] = __builtin_shuffle(t[i + 1], t[i + 3], kPairsLow);
    r[i + 3] = __builtin_shuffle(t[i + 1], t[i + 3], kPairsHigh);
  }
  for (int c = 0; c < 4; ++c) {  // quarters 0 and 2, or 1 and 3, of two groups of rows
    t[c] = __builtin_shuffle(r[c], r[4 + c], kEvenQuarters);
    t[4 + c] = __builtin_shuffle(r[c], r[4 + c], kOddQuarters);
    t[8 + c] = __builtin_shuffle(r[8 + c], r[12 + c], kEvenQuarters);
    t[12 + c] = __builtin_shuffle(r[8 + c], r[12 + c], kOddQuarters);
  }
  for (int c = 0; c < 4; ++c) {  // steps c, 4 + c, 8 + c and 12 + c, all 16 rows each
    const Vector steps[4] = {
        __builtin_shuffle(t[c], t[8 + c], kEvenQuarters), __builtin_shuffle(t[4 + c], t[12 + c], kEvenQuarters),
        __builtin_shuffle(t[c], t[8 + c], kOddQuarters), __builtin_shuffle(t[4 + c], t[12 + c], kOddQuarters)};
    for (int q = 0; q < 4; ++q) std::memcpy(out + (4 * q + c) * out_stride, &steps[q], sizeof(Vector));
  }
}

// Rows [first, last) of the strictly lower triangle of C (rows ldc apart) copied from the upper
// one: 16 rows at a time, each 16 x 16 block left of the diagonal block transposed in registers
// (value by value, the copy read the upper triangle a value per row of it), the rest value by value.
void mirror_rows(float* c, int64_t ldc, int64_t first, int64_t last) {
  const auto copy_row = [&](int64_t i, int64_t from) {
    for (int64_t j = from; j < i; ++j) c[i * ldc + j] = c[j * ldc + i];
  };
  int64_t i0 = first;
  for (; i0 + 16 <= last; i0 += 16) {
    int64_t j0 = 0;
    for (; j0 + 16 <= i0; j0 += 16) {
      const float* rows[16];
      for (int64_t r = 0; r < 16; ++r) rows[r] = c + (j0 + r) * ldc + i0;
      transpose_16x16(rows, c + i0 * ldc + j0, ldc);
    }
    for (int64_t i = i0; i < i0 + 16; ++i) copy_row(i, j0);
  }
  for (int64_t i = i0; i < last; ++i) copy_row(i, 0);
}

// The mirror of rows [first, last) x columns [j, j + cols) of C's upper triangle (cols at most
// kTileCols): their elements right of the diagonal copied to their places in the lower triangle,
// 16 x 16 at a time through a transpose, the blocks 16 rows apart from row 0 so that each row of the
// lower triangle is written 64 bytes at a time. It reads only those elements (a diagonal tile's
// lower ones may be another thread's mirror in progress) and writes only their mirrors, so
// threads may mirror disjoint rows at once.
__attribute__((target("arch=x86-64-v4"))) void mirror_rows_of_panel(float* c, int64_t ldc, int64_t first, int64_t last,
                                                                    int64_t j, int64_t cols) {
  alignas(64) float upper[16][16];
  alignas(64) float lower[16][16];
  const float* rows_of_upper[16];
  for (int64_t r = 0; r < 16; ++r) rows_of_upper[r] = upper[r];
  for (int64_t i = first / 16 * 16; i < last; i += 16) {
    const int64_t live_first = std::max(first, i) - i, live_end = std::min(last, i + 16) - i;
    for (int64_t half = 0; half < cols; half += 16) {
      const int64_t j0 = j + half;
      for (int64_t r = 0; r < 16; ++r) {
        // Row i + r's columns right of its diagonal, j0 + q > i + r.
        const __mmask16 mask = lanes_below(cols - half) & ~lanes_below(i + r + 1 - j0);
        const bool live = r >= live_first && r < live_end;
        _mm512_store_ps(upper[r], live ? _mm512_maskz_loadu_ps(mask, c + (i + r) * ldc + j0) : _mm512_setzero_ps());
      }
      transpose_16x16(rows_of_upper, lower[0], 16);
      for (int64_t q = 0; q < std::min<int64_t>(16, cols - half); ++q) {
        // Row j0 + q of the lower triangle: columns i + r for the live rows left of its diagonal.
        const __mmask16 mask = lanes_below(std::min(live_end, j0 + q - i)) & ~lanes_below(live_first);
        _mm512_mask_storeu_ps(c + (j0 + q) * ldc + i, mask, _mm512_load_ps(lower[q]));
      }
    }
  }
}

// Steps [k0, k0 + depth) of columns [col0 + panel * kTileCols, ...) of op(B): one panel of
// kTileCols columns, step by step, the columns past `cols` zero.
void pack_b_panel(const Operand& b, int64_t k0, int64_t depth, int64_t col0, int64_t cols, float* out) {
  const int64_t live = std::min(kTileCols, cols);
  if (b.transposed) {  // each column of op(B) is a contiguous row of memory
    // 16 steps at a time by transposes of 16 x 16 (value by value, packing a transposed B took as
    // long as the products themselves in Winograd's weight gradient, 32 x 32 x 64 each); the rest
    // value by value.
    static const float zeros[16] = {};
    int64_t kk = 0;
    for (; kk + 16 <= depth; kk += 16)
      for (int64_t half = 0; half < kTileCols; half += 16) {
        const float* rows[16];
        for (int64_t r = 0; r < 16; ++r)
          rows[r] = half + r < live ? b.data + (col0 + half + r) * b.ld + k0 + kk : zeros;
        transpose_16x16(rows, out + kk * kTileCols + half, kTileCols);
      }
    for (int64_t j = 0; j < kTileCols; ++j) {
      const float* in = b.data + (col0 + j) * b.ld + k0;
      for (int64_t step = kk; step < depth; ++step) out[step * kTileCols + j] = j < live ? in[step] : 0.0f;
    }
  } else {
    for (int64_t kk = 0; kk < depth; ++kk) {
      const float* in = b.data + (k0 + kk) * b.ld + col0;
      for (int64_t j = 0; j < live; ++j) out[kk * kTileCols + j] = in[j];
      for (int64_t j = live; j < kTileCols; ++j) out[kk * kTileCols + j] = 0.0f;
    }
  }
}

// A tile's rows of C are wanted only after its loop along K: asked for before, they arrive while it
// runs (a large C is not in cache: 2048^3 went from 160 to 178-181 GFLOP/s on one core). Asked for
// here rather than in tile_kernel, where GCC kept the row addresses for its stores in vector
// registers and spilled a vector of B to the stack instead.
void prefetch_tile(const float* c, int64_t ldc, int64_t rows) {
  for (int64_t r = 0; r < rows; ++r) {
    _mm_prefetch(reinterpret_cast<const char*>(c + r * ldc), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(c + r * ldc + 16), _MM_HINT_T0);
  }
}

// tile_kernel with as few rows as cover `rows`.
template <ALayout kLayout, bool kOnDiagonal, bool kAskAhead>
void tile_of_rows(int64_t depth, const float* a, int64_t lda, const float* b_panel, float* c, int64_t ldc, int64_t rows,
                  int64_t cols, float alpha, float beta, bool first, const float* init, int64_t init_ld,
                  int64_t diagonal, const float* next_a, int64_t next_rows) {
  if (rows <= 4)
    return tile_kernel<kLayout, 4, false, kTileCols, kOnDiagonal, kAskAhead>(
        depth, a, lda, b_panel, kTileCols, c, ldc, rows, cols, alpha, beta, first, nullptr, init, init_ld, diagonal,
        next_a, next_rows);
  if (rows <= 8)
    return tile_kernel<kLayout, 8, false, kTileCols, kOnDiagonal, kAskAhead>(
        depth, a, lda, b_panel, kTileCols, c, ldc, rows, cols, alpha, beta, first, nullptr, init, init_ld, diagonal,
        next_a, next_rows);
  tile_kernel<kLayout, kTileRows, false, kTileCols, kOnDiagonal, kAskAhead>(depth, a, lda, b_panel, kTileCols, c, ldc,
                                                                            rows, cols, alpha, beta, first, nullptr,
                                                                            init, init_ld, diagonal, next_a, next_rows);
}

// The tile kernel a tile needs: its mask for the diagonal (where `diagonal` puts some of its rows'
// columns in the lower triangle) and its requests for the next tile's rows of A (next_rows > 0)
// compiled in only where used.
template <ALayout kLayout>
void tile(int64_t depth, const float* a, int64_t lda, const float* b_panel, float* c, int64_t ldc, int64_t rows,
          int64_t cols, float alpha, float beta, bool first, const float* init, int64_t init_ld, int64_t diagonal,
          const float* next_a, int64_t next_rows) {
  const bool on_diagonal = diagonal + rows - 1 > 0;
  const auto run = [&](auto on_diagonal_tag, auto ask_ahead_tag) {
    tile_of_rows<kLayout, decltype(on_diagonal_tag)::value, decltype(ask_ahead_tag)::value>(
        depth, a, lda, b_panel, c, ldc, rows, cols, alpha, beta, first, init, init_ld, diagonal, next_a, next_rows);
  };
  using Yes = std::true_type;
  using No = std::false_type;
  if constexpr (kLayout == ALayout::Rows) {
    if (next_rows > 0) return on_diagonal ? run(Yes{}, Yes{}) : run(No{}, Yes{});
  }
  on_diagonal ? run(Yes{}, No{}) : run(No{}, No{});
}

struct Product {
  Operand a, b;
  int64_t m, n, k;
  float alpha, beta;
  float* c;
  int64_t ldc;
  Part part;
  const float* d;  // D, the matrix beta scales (see sgemm), or null: C itself
  int64_t ldd;
};

// How the rows of C are cut into blocks: a multiple of `threads` blocks of at most kBlockRows
// rows, each a whole number of tiles, so that the threads get equal shares. Part::Symmetric's blocks
// hold less work the lower they lie (a row's tiles start at its diagonal): with several threads,
// at least two blocks each, which task_in_round deals out so that the shares come out even.
struct RowBlocks {
  int64_t count, rows;
  RowBlocks(int64_t m, int64_t threads, Part part) {
    const int64_t wanted = (m + kBlockRows - 1) / kBlockRows;
    const int64_t least = part == Part::Symmetric && threads > 1 ? 2 * threads : 1;
    count = (std::max(wanted, least) + threads - 1) / threads * threads;
    const int64_t per_block = (m + count - 1) / count;
    rows = std::max(kTileRows, (per_block + kTileRows - 1) / kTileRows * kTileRows);
    count = (m + rows - 1) / rows;
  }
};

// A thread's tiles of C when the threads share C's columns: panels [first_panel, last_panel], all
// of their tiles but those above first_row in the first panel and from end_row on in the last.
struct TileRange {
  int64_t first_panel = 0, first_row = 0, last_panel = std::numeric_limits<int64_t>::max(),
          end_row = std::numeric_limits<int64_t>::max();
  bool owns(int64_t panel, int64_t row) const {
    return !(panel == first_panel && row < first_row) && !(panel == last_panel && row >= end_row);
  }
};

// How the threads share C's tiles when each takes a range of C's columns (run_column_share): the
// tiles counted panel by panel, down each panel (for Part::Symmetric, to its last column's diagonal),
// each thread taking a run of them with an equal share of the work (share_start). (By whole
// panels, the upper triangle of a 256 x 256 syrk gave two threads 58 and 41 of its 99 tiles.)
//
// Sharing rows instead (run_share), the threads pack one block of B together and each reads all of
// it, half from the other core's cache, between two barriers per block of steps; sharing columns,
// each reads all of A instead, and nothing else. Measured on two cores (paired in one process,
// experiments/results/cpu-ops-2026-12-05-2vcpu-epyc-session28.md), columns took 0.73-0.80 of the
// time of 256^3 products and syrk, 0.69-0.77 where C is small and K long (128 x 128 x 768,
// 128 x 384 x 768), 0.87-0.91 on the GPT's layers (768 x 128..512), 0.87-0.94 at 2048^3; but
// 1.04-1.30 where A is tall and too large to read twice cheaply (4096 x 512 and up, with C narrower
// than tall). So columns where C is at least as wide as tall or A is at most 4 MiB, with at least
// two panels per thread.
struct ColumnShares {
  const Product& p;
  int threads;
  int64_t panels;
  ColumnShares(const Product& product, int thread_count)
      : p(product), threads(thread_count), panels((product.n + kTileCols - 1) / kTileCols) {}
  bool pay() const { return panels >= 2 * threads && (p.m <= p.n || p.m * p.k <= kSmallA); }
  static constexpr int64_t kSmallA = int64_t{1} << 20;  // floats

  int64_t tiles_in(int64_t panel) const {
    const int64_t rows = p.part == Part::Symmetric ? std::min(p.m, (panel + 1) * kTileCols) : p.m;
    return (rows + kTileRows - 1) / kTileRows;
  }
  // Thread `thread`'s tiles (none: first_panel > last_panel).
  TileRange range(int thread) const {
    const auto [first_panel, first_tile] = share_start(thread);
    const auto [end_panel, end_tile] = share_start(thread + 1);
    if (first_panel == end_panel && first_tile == end_tile) return TileRange{0, 0, -1, 0};
    if (end_tile == 0) return {first_panel, first_tile * kTileRows, end_panel - 1, tiles_in(end_panel - 1) * kTileRows};
    return {first_panel, first_tile * kTileRows, end_panel, end_tile * kTileRows};
  }
  // Where share `part` of `threads` starts, as (panel, tile in it): the first tile with at least part / threads
  // of the work before it, a tile counting kTileWork and the packing of a panel kPackWork (a thread packs
  // each panel it has tiles in). Counting tiles alone, the first of two threads on the upper triangle of a
  // 256 x 256 syrk packed six panels to the second's three and ran 12 us longer of 86.
  std::pair<int64_t, int64_t> share_start(int part) const {
    static constexpr int64_t kTileWork = 4, kPackWork = 8;
    int64_t total = 0;
    for (int64_t panel = 0; panel < panels; ++panel) total += tiles_in(panel) * kTileWork + kPackWork;
    const int64_t wanted = (total * part + threads - 1) / threads;
    for (int64_t panel = 0, before = 0; panel < panels; ++panel) {
      if (before >= wanted) return {panel, 0};
      // Tile q >= 1 of this panel has before + kPackWork + q kTileWork before it.
      const int64_t tile = std::max<int64_t>(1, (wanted - before - kPackWork + kTileWork - 1) / kTileWork);
      if (tile < tiles_in(panel)) return {panel, tile};
      before += tiles_in(panel) * kTileWork + kPackWork;
    }
    return {panels, 0};
  }
  // The most columns one thread's range spans, for the packed panels of B.
  int64_t widest() const {
    int64_t most = 0;
    for (int t = 0; t < threads; ++t) {
      const TileRange r = range(t);
      most = std::max(most, r.last_panel - r.first_panel + 1);
    }
    return most * kTileCols;
  }
};

// The tiles of C rows [row0, row0 + rows) x panels [first_panel, last_panel) of the packed block of
// B that starts at column col0 (those `owned` holds), over steps [k0, k0 + depth). A row-major A is read in place:
// packing it (a transpose into steps of 12) cost a fifth of a 768 x 128 x 128 product, while the
// tile reads its 12 rows as 12 sequential streams from cache; a transposed A is packed. B is
// always packed: read in place, a panel's rows ldb apart share a few L1 sets (2048^3: 143-150
// against 160 GFLOP/s), and packing gains back all but ~3% of its cost on the smallest B-heavy
// products (128 x 512 x 768). Where A was just written, half of it by the other core (Newton-Schulz's
// chain of products), the tiles wait for its lines to cross over: with ask_ahead, each tile asks for
// the next one's rows while it runs, unless an earlier panel's tiles read them. NS5 at two threads,
// paired in one process: 256 x 256 0.95-0.96 of the time; 256 x 1024 0.99, 512 x 512 and 1024 x 1024
// 1.01-1.02 (so only where A is at most kAskAheadA); 128 x 512 1.00. Asking in every panel, where
// the rows are already in L2, cost 1-3% at 128 and 1024 wide.
void block_times_panels(const Product& p, int64_t row0, int64_t rows, int64_t col0, int64_t cols, int64_t first_panel,
                        int64_t last_panel, int64_t k0, int64_t depth, const float* packed_b, float* packed_a,
                        const TileRange& owned = TileRange{}, bool ask_ahead = false) {
  const bool in_place = !p.a.transposed;
  if (!in_place) pack_transposed_a(p.a, row0, rows, k0, depth, packed_a);
  const bool first = k0 == 0;
  int64_t read_from = 0, read_to = 0;  // the rows of A that earlier panels' tiles read (none yet)
  for (int64_t panel = first_panel; panel < last_panel; ++panel) {
    const int64_t j = col0 + panel * kTileCols, live_cols = std::min(kTileCols, col0 + cols - j);
    const float* b_panel = packed_b + panel * depth * kTileCols;
    int64_t panel_from = -1, panel_to = -1;
    for (int64_t i = row0; i < row0 + rows; i += kTileRows) {
      // Symmetric: a tile whose last column is left of its first row's diagonal is mirrored instead.
      if (p.part == Part::Symmetric && j + live_cols - 1 < i) continue;
      if (!owned.owns(j / kTileCols, i)) continue;
      const int64_t live_rows = std::min(kTileRows, row0 + rows - i);
      float* c = p.c + i * p.ldc + j;
      prefetch_tile(c, p.ldc, live_rows);
      const float* d = p.d ? p.d + i * p.ldd + j : nullptr;
      const int64_t diagonal = p.part == Part::Symmetric ? i - j : kNoDiagonal;
      const int64_t next = i + kTileRows;
      const bool next_unread = read_from == read_to || next < read_from || next + kTileRows > read_to;
      const int64_t next_rows = ask_ahead && next_unread ? std::min(kTileRows, row0 + rows - next) : 0;
      if (in_place)
        tile<ALayout::Rows>(depth, p.a.data + i * p.a.ld + k0, p.a.ld, b_panel, c, p.ldc, live_rows, live_cols, p.alpha,
                            p.beta, first, d, p.ldd, diagonal, next_rows > 0 ? p.a.data + next * p.a.ld + k0 : nullptr,
                            next_rows);
      else
        tile<ALayout::Columns>(depth, packed_a + (i - row0) * depth, kTileRows, b_panel, c, p.ldc, live_rows, live_cols,
                               p.alpha, p.beta, first, d, p.ldd, diagonal, nullptr, 0);
      if (panel_from < 0) panel_from = i;
      panel_to = i + live_rows;
    }
    if (panel_from < 0) continue;
    const bool none_read = read_from == read_to;
    read_from = none_read ? panel_from : std::min(read_from, panel_from);
    read_to = none_read ? panel_to : std::max(read_to, panel_to);
  }
}

// The task thread `thread` runs in round `round`: the round's `threads` tasks in turn, in reverse
// order every other round. Over blocks of falling work (Part::Symmetric) each thread then pairs a
// heavier block with a lighter one: the symmetric 256 x 256 x 256 product at two threads took longer
// than at one (134 against 112 us) while the first thread computed three quarters of it.
int64_t task_in_round(int64_t round, int thread, int threads) {
  return round * threads + (round % 2 == 0 ? thread : threads - 1 - thread);
}

// Thread `thread` of `threads`' share of the product. With more than one thread every thread runs
// this, and the barriers keep the shared packed block of B whole while anyone reads it.
// Each thread packs its blocks of A into its own part of packed_as (a_floats each).
void run_share(const Product& p, int thread, int threads, float* packed_b, float* packed_as, int64_t a_floats) {
  const RowBlocks blocks(p.m, threads, p.part);
  float* packed_a = packed_as + thread * a_floats;
  for (int64_t col0 = 0; col0 < p.n; col0 += kBlockCols) {
    const int64_t cols = std::min(kBlockCols, p.n - col0), panels = (cols + kTileCols - 1) / kTileCols;
    // Too few blocks of rows for the threads: each block's panels are cut into groups too.
    const int64_t groups = std::min(panels, (threads + blocks.count - 1) / blocks.count);
    const int64_t tasks = blocks.count * groups;
    for (int64_t k0 = 0; k0 < p.k; k0 += kDepth) {
      const int64_t depth = std::min(kDepth, p.k - k0);
      for (int64_t panel = thread; panel < panels; panel += threads)
        pack_b_panel(p.b, k0, depth, col0 + panel * kTileCols, cols - panel * kTileCols,
                     packed_b + panel * depth * kTileCols);
      if (threads > 1) {
#pragma omp barrier
      }
      for (int64_t round = 0; round * threads < tasks; ++round) {
        const int64_t task = task_in_round(round, thread, threads);
        if (task >= tasks) continue;
        const int64_t block = task / groups, group = task % groups;
        const int64_t row0 = block * blocks.rows, rows = std::min(blocks.rows, p.m - row0);
        block_times_panels(p, row0, rows, col0, cols, group * panels / groups, (group + 1) * panels / groups, k0,
                           depth, packed_b, packed_a);
      }
      if (threads > 1) {
#pragma omp barrier
      }
    }
  }
}

// The lower triangle's part mirrored from the tiles of a symmetric product a thread owns: done by
// each thread as soon as its own tiles are, it needs no barrier and reads what its core just wrote
// (with the threads' bands of mirror_rows after a barrier, a 256 x 256 syrk at two threads took
// 73-74 us, 64 without any mirror; mirroring its own tiles, 63-65).
void mirror_owned_tiles(const Product& p, const TileRange& owned) {
  for (int64_t panel = owned.first_panel; panel <= owned.last_panel; ++panel) {
    const int64_t j = panel * kTileCols, cols = std::min(kTileCols, p.n - j);
    const int64_t first = panel == owned.first_panel ? owned.first_row : 0;
    const int64_t last = std::min(panel == owned.last_panel ? owned.end_row : p.m, std::min(p.m, j + cols));
    mirror_rows_of_panel(p.c, p.ldc, first, last, j, cols);
  }
}

// Thread `thread`'s share of the product when each owns a range of C's tiles (ColumnShares): it
// packs the panels of B its tiles need and runs every block of rows against them, so the threads
// never wait for each other (two may both pack the panel they share). Each thread reads all of A,
// and where A is small, the product is short and A was likely just written, half by the other core:
// there its tiles ask for the rows of A ahead (block_times_panels).
void run_column_share(const Product& p, const TileRange& owned, float* packed_b, float* packed_a) {
  const bool ask_ahead = p.m * p.k <= kAskAheadA;
  const int64_t share_end = std::min(p.n, (owned.last_panel + 1) * kTileCols);
  for (int64_t col0 = owned.first_panel * kTileCols; col0 < share_end; col0 += kBlockCols) {
    const int64_t cols = std::min(kBlockCols, share_end - col0), panels = (cols + kTileCols - 1) / kTileCols;
    const int64_t m = p.part == Part::Symmetric ? std::min(p.m, col0 + cols) : p.m;
    for (int64_t k0 = 0; k0 < p.k; k0 += kDepth) {
      const int64_t depth = std::min(kDepth, p.k - k0);
      for (int64_t panel = 0; panel < panels; ++panel)
        pack_b_panel(p.b, k0, depth, col0 + panel * kTileCols, cols - panel * kTileCols,
                     packed_b + panel * depth * kTileCols);
      for (int64_t row0 = 0; row0 < m; row0 += kBlockRows)
        block_times_panels(p, row0, std::min(kBlockRows, m - row0), col0, cols, 0, panels, k0, depth, packed_b,
                           packed_a, owned, ask_ahead);
    }
  }
}

// Runs a product: its packed buffers, then its share on each thread.
void run(const Product& p, bool parallel) {
  const int64_t m = p.m, n = p.n, k = p.k;
  const int threads = parallel && !omp_in_parallel() && m * n * k >= kThreadedProductWork ? omp_get_max_threads() : 1;
  const ColumnShares shares(p, threads);
  const bool by_columns = threads > 1 && shares.pay();
  // Each thread packs its blocks of A into its own part of the A buffer and, sharing columns, its
  // panels of B into its own part of the B buffer (sharing rows, the threads pack one block of B
  // together, which the buffer also has room for). The buffers are the calling thread's, taken
  // before the threads start: nothing in the parallel region allocates (an exception there could
  // not reach the caller).
  const auto block_of_b = [&](int64_t cols) {
    return std::min(kDepth, k) * ((std::min(kBlockCols, cols) + kTileCols - 1) / kTileCols * kTileCols);
  };
  const int64_t b_floats = by_columns ? block_of_b(shares.widest()) : 0;
  float* packed_bs = thread_buffer(kSlotB, std::max(block_of_b(n), b_floats * threads));
  // Room for a block of rows however many threads the region gets (RowBlocks: at most kBlockRows).
  const int64_t a_floats = std::min(kBlockRows, (m + kTileRows - 1) / kTileRows * kTileRows) * std::min(kDepth, k);
  float* packed_as = thread_buffer(kSlotA, a_floats * threads);
  const bool mirror = p.part == Part::Symmetric;
  if (threads == 1) {
    run_share(p, 0, 1, packed_bs, packed_as, a_floats);
    if (mirror) mirror_rows(p.c, p.ldc, 0, n);
    return;
  }
#pragma omp parallel num_threads(threads)
  {
    const int thread = omp_get_thread_num(), count = omp_get_num_threads();
    // A team smaller than planned (OMP_THREAD_LIMIT under the thread count, OMP_DYNAMIC) would
    // leave the missing threads' columns undone: sharing rows adapts to any team.
    if (by_columns && count == threads) {
      const TileRange owned = shares.range(thread);
      run_column_share(p, owned, packed_bs + thread * b_floats, packed_as + thread * a_floats);
      if (mirror) mirror_owned_tiles(p, owned);
    } else {
      run_share(p, thread, count, packed_bs, packed_as, a_floats);
      if (mirror) {
        // Once every upper tile is written, bands of rows with equal shares of the lower triangle.
        // (As a pass of its own, in a region of its own, it read the tiles after the region's end:
        // Newton-Schulz on 256-wide matrices at two threads took 1.01-1.03 times as long as now,
        // paired in one process.)
#pragma omp barrier
        mirror_rows(p.c, p.ldc, triangle_band_start(n, thread, count), triangle_band_start(n, thread + 1, count));
      }
    }
  }
}

}  // namespace

void sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
           const float* b, int64_t ldb, float beta, float* c, int64_t ldc, bool parallel, Part part, const float* d,
           int64_t ldd) {
  if (m == 0 || n == 0) return;
  if (k == 0) {  // an empty sum: C = beta D
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = part == Part::Symmetric ? i : 0; j < n; ++j)
        c[i * ldc + j] = beta == 0.0f ? 0.0f : beta * (d ? d[i * ldd + j] : c[i * ldc + j]);
    if (part == Part::Symmetric) mirror_rows(c, ldc, 0, n);
    return;
  }
  run({{a, lda, trans_a}, {b, ldb, trans_b}, m, n, k, alpha, beta, c, ldc, part, d, ldd}, parallel);
}

#else  // no x86-64: OpenBLAS serves every product

bool own_sgemm_runs() { return false; }
void sgemm(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*, int64_t, float, float*,
           int64_t, bool, Part, const float*, int64_t) {
  std::abort();
}

#endif

}  // namespace ml::cpu_gemm
