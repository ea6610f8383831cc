// Fused attention on the CPU, two ways (cpu_attention.h). The reference: FlashAttention (Dao et al.
// 2022, "FlashAttention: Fast and Memory-Efficient Exact Attention with IO-Awareness", Algorithm 1
// forward, Algorithm 2 backward) written as plain loops, which backends/cuda/cuda_attention.cu
// follows loop for loop: one query row (forward, grad_q) or one key row (grad_k, grad_v) per
// iteration, rows spread over OpenMP threads. It never stores a [T, S] matrix: the forward keeps a
// running max and sum per row (the online softmax) and the backward recomputes each probability
// from q, k and the row's log-sum-exp. The blocked path (further down), which CpuBackend runs
// where it applies, computes the same with small register-blocked products and keeps one head's
// [T, S] probabilities and their gradients in per-thread scratch during the backward.
//
// Notation, per head: s_ij = scale * q_i . k_j, p_ij = exp(s_ij - lse_i), o_i = sum_j p_ij v_j.
// With g_i = dL/do_i the backward is
//   dp_ij = g_i . v_j,   ds_ij = p_ij (dp_ij - D_i)   where D_i = sum_j p_ij dp_ij = g_i . o_i,
//   dq_i = scale sum_j ds_ij k_j,   dk_j = scale sum_i ds_ij q_i,   dv_j = sum_i p_ij g_i.
// grad_q is one pass over query rows and grad_k/grad_v a second pass over key rows: each output
// row belongs to one iteration, so threads never write the same row and no atomics are needed, at
// the price of computing every p_ij and ds_ij twice.
#include "framework/backends/cpu/cpu_attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "framework/backends/cpu/cpu_backend.h"
#include "framework/backends/cpu/cpu_gemm.h"
#include "framework/backends/cpu/cpu_gemm_tile.h"
#include "framework/backends/cpu/cpu_loops.h"
#include "framework/backends/elementwise_math.h"

namespace ml {
using namespace cpu_loops;
using elementwise::exp_approx;
using elementwise::log_of_positive;

namespace {

// Scores of one tile of keys live in a stack array; the running max is rescaled once per tile.
constexpr int64_t kKeyTile = 32;
// Causal rows differ in cost (row i sees i + 1 keys): threads take small chunks of rows in turn.
constexpr int64_t kRowsPerChunk = 8;

// The sizes of q [B, H, T, D], k [B, H, S, D], v [B, H, S, Dv] (with BH = B * H heads) and which
// keys each query sees.
struct AttentionDims {
  int64_t batch_heads, queries, keys, head_dim, value_dim;
  bool causal;
  // Query i sees keys [0, visible_keys(i)).
  int64_t visible_keys(int64_t i) const { return causal ? std::min(i + 1, keys) : keys; }
  // Key j is seen by queries [first_query(j), queries).
  int64_t first_query(int64_t j) const { return causal ? j : 0; }
};

AttentionDims dims_of(const Tensor& q, const Tensor& k, const Tensor& v, bool causal) {
  return {q.size(0) * q.size(1), q.size(2), k.size(2), q.size(3), v.size(3), causal};
}

template <typename T>
T dot(const T* a, const T* b, int64_t n) {
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t c = 0; c < n; ++c) s += a[c] * b[c];
  return s;
}

// y += alpha * x
template <typename T>
void axpy(T* y, T alpha, const T* x, int64_t n) {
#pragma omp simd
  for (int64_t c = 0; c < n; ++c) y[c] += alpha * x[c];
}

// Runs body(head, row) for rows [0, rows) of every head, each row costing about `row_work`.
template <typename Body>
void for_each_row(int64_t batch_heads, int64_t rows, int64_t row_work, Body body) {
  const int64_t total = batch_heads * rows;
#pragma omp parallel for schedule(dynamic, kRowsPerChunk) if (total > 1 && total * row_work >= kParallelGrain)
  for (int64_t r = 0; r < total; ++r) body(r / rows, r % rows);
}

// Row i of head h = b * H + h' of a [B, H, rows, width] view whose rows are contiguous, at its
// strides (lse [B, H, rows]: one value a row): heads split from a packed projection are read where
// they lie.
template <typename T>
struct HeadRows {
  T* data;
  int64_t heads, batch_stride, head_stride, row_stride;
  T* head(int64_t h) const { return data + h / heads * batch_stride + h % heads * head_stride; }
  T* operator()(int64_t h, int64_t i) const { return head(h) + i * row_stride; }
};

template <typename T>
HeadRows<T> head_rows(const Tensor& t) {
  return {t.data<T>(), t.size(1), t.strides()[0], t.strides()[1], t.strides()[2]};
}

template <typename T>
struct PairGrad {
  T p;
  T ds;
};

}  // namespace

namespace cpu_attention {

// Algorithm 1 for one query row at a time: for each tile of visible keys, the tile's scores, a new
// running max m, then the running sum l and the unnormalized output rescaled by exp(m_old - m_new)
// before the tile's terms are added. out_i = acc / l and lse_i = m + log(l) at the end.
void reference_forward(const Tensor& q, const Tensor& k, const Tensor& v, bool causal, double scale, const Tensor& out,
                       const Tensor& lse) {
  const AttentionDims d = dims_of(q, k, v, causal);
  dispatch_floating(q.dtype(), "attention", [&](auto tag) {
    using T = decltype(tag);
    constexpr T minus_inf = -std::numeric_limits<T>::infinity();
    const T s = static_cast<T>(scale);
    const HeadRows<T> q_rows = head_rows<T>(q), k_rows = head_rows<T>(k), v_rows = head_rows<T>(v),
                      out_rows = head_rows<T>(out), lse_rows = head_rows<T>(lse);
    for_each_row(d.batch_heads, d.queries, d.keys * (d.head_dim + d.value_dim), [&](int64_t head, int64_t i) {
      const T* q_i = q_rows(head, i);
      T* acc = out_rows(head, i);  // the output row accumulates in place: it is this iteration's alone
      std::fill(acc, acc + d.value_dim, T(0));
      T running_max = minus_inf, running_sum = 0;
      const int64_t visible = d.visible_keys(i);
      for (int64_t j0 = 0; j0 < visible; j0 += kKeyTile) {
        const int64_t tile = std::min(kKeyTile, visible - j0);
        T scores[kKeyTile];
        T tile_max = minus_inf;
        for (int64_t jj = 0; jj < tile; ++jj) {
          scores[jj] = s * dot(q_i, k_rows(head, j0 + jj), d.head_dim);
          tile_max = std::max(tile_max, scores[jj]);
        }
        const T new_max = std::max(running_max, tile_max);
        const T rescale = std::exp(running_max - new_max);  // 0 on the first tile: exp(-inf)
        running_sum *= rescale;
        for (int64_t c = 0; c < d.value_dim; ++c) acc[c] *= rescale;
        for (int64_t jj = 0; jj < tile; ++jj) {
          const T p = std::exp(scores[jj] - new_max);
          running_sum += p;
          axpy(acc, p, v_rows(head, j0 + jj), d.value_dim);
        }
        running_max = new_max;
      }
      if (running_sum == T(0)) {  // no visible key: the output row stays 0
        *lse_rows(head, i) = minus_inf;
        return;
      }
      for (int64_t c = 0; c < d.value_dim; ++c) acc[c] /= running_sum;
      *lse_rows(head, i) = running_max + std::log(running_sum);
    });
  });
}

// Algorithm 2, reorganized into D_i, then a pass over query rows for grad_q and a pass over key
// rows for grad_k and grad_v (see the top of the file).
void reference_backward(const Tensor& grad_out, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& lse, bool causal, double scale, const Tensor& grad_q, const Tensor& grad_k,
                        const Tensor& grad_v) {
  const AttentionDims d = dims_of(q, k, v, causal);
  dispatch_floating(q.dtype(), "attention_backward", [&](auto tag) {
    using T = decltype(tag);
    const T s = static_cast<T>(scale);
    const HeadRows<T> q_rows = head_rows<T>(q), k_rows = head_rows<T>(k), v_rows = head_rows<T>(v),
                      g_rows = head_rows<T>(grad_out), out_rows = head_rows<T>(out), lse_rows = head_rows<T>(lse),
                      dq_rows = head_rows<T>(grad_q), dk_rows = head_rows<T>(grad_k), dv_rows = head_rows<T>(grad_v);
    std::vector<T> row_dots_data(static_cast<size_t>(d.batch_heads * d.queries));
    const HeadRows<T> row_dots{row_dots_data.data(), 1, d.queries, 0, 1};
    for_each_row(d.batch_heads, d.queries, d.value_dim, [&](int64_t head, int64_t i) {
      *row_dots(head, i) = dot(g_rows(head, i), out_rows(head, i), d.value_dim);
    });

    // p_ij and ds_ij, recomputed from the forward's log-sum-exp.
    const auto pair_grad = [&](int64_t head, int64_t i, int64_t j) {
      const T p = std::exp(s * dot(q_rows(head, i), k_rows(head, j), d.head_dim) - *lse_rows(head, i));
      const T dp = dot(g_rows(head, i), v_rows(head, j), d.value_dim);
      return PairGrad<T>{p, p * (dp - *row_dots(head, i))};
    };

    for_each_row(d.batch_heads, d.queries, d.keys * (d.head_dim + d.value_dim), [&](int64_t head, int64_t i) {
      T* dq_i = dq_rows(head, i);
      std::fill(dq_i, dq_i + d.head_dim, T(0));
      for (int64_t j = 0; j < d.visible_keys(i); ++j) axpy(dq_i, s * pair_grad(head, i, j).ds, k_rows(head, j), d.head_dim);
    });

    for_each_row(d.batch_heads, d.keys, d.queries * (d.head_dim + d.value_dim), [&](int64_t head, int64_t j) {
      T* dk_j = dk_rows(head, j);
      T* dv_j = dv_rows(head, j);
      std::fill(dk_j, dk_j + d.head_dim, T(0));
      std::fill(dv_j, dv_j + d.value_dim, T(0));
      for (int64_t i = d.first_query(j); i < d.queries; ++i) {
        const PairGrad<T> pg = pair_grad(head, i, j);
        axpy(dv_j, pg.p, g_rows(head, i), d.value_dim);
        axpy(dk_j, s * pg.ds, q_rows(head, i), d.head_dim);
      }
    });
  });
}

// ---- The blocked path: the same attention, one head per iteration, its products as small matrix
// products whose accumulators stay in vector registers. The reference above computes each score
// and each output row with dot products and axpys of one row at a time (and the backward every
// p_ij twice), which leaves the GPT's heads (64 x 64 scores of depth 32) at a few percent of the
// processor's peak; here a head's scores, probabilities and their gradients are built block by
// block in scratch memory, like the composed path's matrices but without a BLAS call per head.

namespace {

// Rows of a product computed together: their accumulators are kRowBlock x block_columns(), 16
// AVX-512 registers for float. Each step along the depth loads a row of B for kRowBlock rows: the
// GPT's heads (one thread, fwd+bwd, small_product) took 0.69 ms with 4 rows, 0.61 with 8 (6 and 12:
// 0.71 and 0.73, 16 spills: 1.4); the AVX2 copy is level (1.25-1.27 ms). Also the causal
// granularity: a block computes the scores its last row sees.
constexpr int64_t kRowBlock = 8;

// Columns per block of a product: two cache lines, so that 4 rows x 2 AVX-512 vectors make 8
// independent accumulators, enough to cover the FMA's latency on two FMA units (with one line, 4
// accumulators left the GPT's heads at about half the speed). Right operands have their rows
// padded to a multiple of it, so every block reads whole blocks.
template <typename T>
constexpr int64_t block_columns() {
  return 128 / static_cast<int64_t>(sizeof(T));
}

int64_t padded(int64_t n, int64_t unit) { return (n + unit - 1) / unit * unit; }

// How a product's left operand A(r, k) lies in memory (cpu_gemm_tile.h): its rows a_stride apart
// (A(r, k) = a[r * a_stride + k]), or transposed, its columns a_stride apart (A(r, k) =
// a[k * a_stride + r]). The layout is a template argument so that every address is a register
// plus an index or a constant, with no address arithmetic beside the FMAs.
using cpu_gemm::ALayout;

// C[r][j] = s_r sum_k A(r, k) B[k][j] for r < rows <= kRowBlock and j < n, s_r = row_scale[r] (1
// where row_scale is null), with B's rows ldb apart and readable to n rounded up to
// block_columns(). Only C's first n columns are written. A block short of kRowBlock rows computes
// rows it never stores: with ALayout::Rows they repeat its last row; with ALayout::Columns they
// read on past it, so such an A must be readable kRowBlock entries on. The readable loops, which
// block_product runs where the GEMM's register tile does not.
template <ALayout kLayout, typename T>
void small_product(const T* a, int64_t a_stride, int64_t rows, const T* b, int64_t ldb, int64_t depth, int64_t n, T* c,
                   int64_t ldc, const T* row_scale = nullptr) {
  constexpr int64_t kCols = block_columns<T>();
  const T* a_rows[kRowBlock];
  for (int64_t r = 0; r < kRowBlock; ++r) a_rows[r] = a + std::min(r, rows - 1) * a_stride;
  for (int64_t j0 = 0; j0 < n; j0 += kCols) {
    T acc[kRowBlock][kCols] = {};
    for (int64_t k = 0; k < depth; ++k) {
      const T* b_k = b + k * ldb + j0;
      for (int64_t r = 0; r < kRowBlock; ++r) {
        const T a_rk = kLayout == ALayout::Rows ? a_rows[r][k] : a[k * a_stride + r];
#pragma omp simd
        for (int64_t j = 0; j < kCols; ++j) acc[r][j] += a_rk * b_k[j];
      }
    }
    // Element by element (a masked vector store), not std::copy: GCC made that a `rep movs`, whose
    // start-up cost a short row does not repay.
    const int64_t width = std::min(kCols, n - j0);
    for (int64_t r = 0; r < rows; ++r) {
      T* c_r = c + r * ldc + j0;
      const T scale = row_scale ? row_scale[r] : T(1);
#pragma omp simd
      for (int64_t j = 0; j < width; ++j) c_r[j] = scale * acc[r][j];
    }
  }
}

// small_product's C, computed by the own float32 GEMM's register tile (cpu_gemm_tile.h) where
// `own_tiles` (float32 where cpu_gemm::own_sgemm_runs(), read before the threads start), else by
// small_product. The GPT's heads, fwd+bwd on one thread: 0.51 -> 0.47 ms (GCC kept the loops' row
// pointers in vector registers and zeroed and stored their accumulators with memset and memcpy).
template <ALayout kLayout, typename T>
void block_product(bool own_tiles, const T* a, int64_t a_stride, int64_t rows, const T* b, int64_t ldb, int64_t depth,
                   int64_t n, T* c, int64_t ldc, const T* row_scale = nullptr) {
#if MUONLAB_OWN_SGEMM
  if constexpr (std::is_same_v<T, float>) {
    static_assert(block_columns<float>() == cpu_gemm::kTileCols, "B's rows are readable to a whole tile");
    if (own_tiles) {
      for (int64_t j0 = 0; j0 < n; j0 += cpu_gemm::kTileCols) {
        const int64_t cols = std::min(cpu_gemm::kTileCols, n - j0);
        const auto tile = [&](auto columns) {
          constexpr int kColumns = decltype(columns)::value;
          if (row_scale)
            cpu_gemm::tile_kernel<kLayout, kRowBlock, true, kColumns>(depth, a, a_stride, b + j0, ldb, c + j0, ldc,
                                                                      rows, cols, 1.0f, 0.0f, true, row_scale);
          else
            cpu_gemm::tile_kernel<kLayout, kRowBlock, false, kColumns>(depth, a, a_stride, b + j0, ldb, c + j0, ldc,
                                                                       rows, cols, 1.0f, 0.0f, true);
        };
        // A last tile of at most 16 columns in one vector a row: the causal scores' blocks end at the
        // block's last row, so a quarter of them end in such a tile (the GPT's heads: 9% fewer FMAs
        // forward, 8% backward).
        if (cols <= 16)
          tile(std::integral_constant<int, 16>{});
        else
          tile(std::integral_constant<int, cpu_gemm::kTileCols>{});
      }
      return;
    }
  }
#else
  (void)own_tiles;
#endif
  small_product<kLayout>(a, a_stride, rows, b, ldb, depth, n, c, ldc, row_scale);
}

// transpose_16x16's rows.
constexpr int kLanes = kVector<float>;
using Lanes = Vector64<float>::type;
using LaneIndices = Vector64<float>::indices;

// Lane c of a two-vector shuffle in one round of transpose_16x16 (lanes 16-31 are the second
// vector's): row i (bit `half` clear) keeps its lane c where c's bit `half` is clear and takes lane
// c - half of row i + half where it is set; row i + half takes lane c + half of row i, or keeps
// its own lane c.
constexpr int exchange_lane(int half, bool upper_row, int c) {
  const bool set = (c & half) != 0;
  return upper_row ? (set ? kLanes + c : c + half) : (set ? kLanes + c - half : c);
}

// One round: rows i and i + half (i's bit `half` clear) trade the element at (i, c) for the one
// at (i + half, c - half) where c's bit `half` is set, which swaps bit `half` between the row and
// column indices of every element whose two bits differ.
template <int kHalf, int... kLane>
void exchange_halves(Lanes (&rows)[kLanes], std::integer_sequence<int, kLane...>) {
  constexpr LaneIndices kLower{exchange_lane(kHalf, false, kLane)...}, kUpper{exchange_lane(kHalf, true, kLane)...};
  for (int i = 0; i < kLanes; ++i) {
    if (i & kHalf) continue;
    const Lanes lower = __builtin_shuffle(rows[i], rows[i + kHalf], kLower);
    rows[i + kHalf] = __builtin_shuffle(rows[i], rows[i + kHalf], kUpper);
    rows[i] = lower;
  }
}

// dst[c][j] = src[j][c] for a 16 x 16 block in registers: the four rounds swap the four bits of
// the row and column indices (64 two-vector shuffles, against 256 single-element loads gathering
// the columns, which cost a seventh of the GPT's attention forward).
void transpose_16x16(const float* src, int64_t ld_src, float* dst, int64_t ld_dst) {
  Lanes rows[kLanes];
  for (int i = 0; i < kLanes; ++i) std::memcpy(&rows[i], src + i * ld_src, sizeof(Lanes));
  constexpr auto kAllLanes = std::make_integer_sequence<int, kLanes>{};
  exchange_halves<8>(rows, kAllLanes);
  exchange_halves<4>(rows, kAllLanes);
  exchange_halves<2>(rows, kAllLanes);
  exchange_halves<1>(rows, kAllLanes);
  for (int i = 0; i < kLanes; ++i) std::memcpy(dst + i * ld_dst, &rows[i], sizeof(Lanes));
}

// dst[c][j] = src[j][c] for a [rows, cols] source whose rows are ld_src apart: dst's rows are ld_dst
// long (padding left as is). The reference: written row by row of dst, so that the stores are whole
// vectors (the loads gather).
template <typename T>
void transpose_by_element(const T* src, int64_t rows, int64_t cols, int64_t ld_src, T* dst, int64_t ld_dst) {
  for (int64_t c = 0; c < cols; ++c)
#pragma omp simd
    for (int64_t j = 0; j < rows; ++j) dst[c * ld_dst + j] = src[j * ld_src + c];
}

// The same, float32 in 16 x 16 blocks where the whole matrix is made of them (the GPT's k and v,
// 64 x 32 per head).
template <typename T>
void transpose_into(const T* src, int64_t rows, int64_t cols, int64_t ld_src, T* dst, int64_t ld_dst) {
  if constexpr (std::is_same_v<T, float>) {
    if (rows % kLanes == 0 && cols % kLanes == 0) {
      for (int64_t j0 = 0; j0 < rows; j0 += kLanes)
        for (int64_t c0 = 0; c0 < cols; c0 += kLanes)
          transpose_16x16(src + j0 * ld_src + c0, ld_src, dst + c0 * ld_dst + j0, ld_dst);
      return;
    }
  }
  transpose_by_element(src, rows, cols, ld_src, dst, ld_dst);
}

// A [rows, cols] matrix (rows ld_src apart) as a product's right operand, whose rows must be
// readable to a whole block of columns: the matrix itself when cols is a whole number of blocks,
// else a copy in `storage` with rows padded to one (the padding zero). Returns the rows; `ld` is
// their distance.
template <typename T>
const T* block_padded(const T* src, int64_t rows, int64_t cols, int64_t ld_src, std::vector<T>& storage, int64_t& ld) {
  if (padded(cols, block_columns<T>()) == cols) {
    ld = ld_src;
    return src;
  }
  ld = padded(cols, block_columns<T>());
  storage.resize(rows * ld, T(0));
  for (int64_t j = 0; j < rows; ++j) std::copy(src + j * ld_src, src + j * ld_src + cols, storage.data() + j * ld);
  return storage.data();
}

// body(h, scratch) for every head h of d, in run_widest's copy, over threads when the heads'
// work is large enough; each thread makes its scratch once (make()) for all its heads. Scratch
// written for one head is read for the next only where that head writes it first, or where no
// head writes it.
template <typename Make, typename Body>
void for_each_head(const AttentionDims& d, Make make, Body body) {
  const int64_t head_work = d.queries * d.keys * (d.head_dim + d.value_dim);
  auto range = [&](int64_t begin, int64_t end) __attribute__((flatten)) {
    if (begin == end) return;
    auto scratch = make();
    for (int64_t h = begin; h < end; ++h) body(h, scratch);
  };
  widest_block_per_thread(d.batch_heads, 1, d.batch_heads > 1 && d.batch_heads * head_work >= kParallelGrain, range);
}

// The block of query rows [i0, i0 + rows) (q's rows ld_q apart): the products q_i . k_j, not yet
// scaled, into `scores` ([kRowBlock][Sp]) for the keys that the block's last row sees. Returns that
// number of keys. Row r's entries from d.visible_keys(i0 + r) on are products of keys it cannot see
// (causal): the callers mask them as they make probabilities of the rest, in the same pass.
template <typename T>
int64_t block_products(bool own_tiles, const AttentionDims& d, const T* q_head, int64_t ld_q, const T* kt,
                       int64_t keys_padded, int64_t i0, int64_t rows, T* scores) {
  const int64_t visible = d.visible_keys(i0 + rows - 1);
  block_product<ALayout::Rows>(own_tiles, q_head + i0 * ld_q, ld_q, rows, kt, keys_padded, d.head_dim, visible, scores,
                               keys_padded);
  return visible;
}

// v = combine(v, v rotated by kWidth lanes), then the same for half the width, down to one lane:
// lane 0 ends up combining all of them.
template <int kWidth, typename T, typename Combine, int... kLane>
void fold_lanes(typename Vector64<T>::type& v, Combine combine, std::integer_sequence<int, kLane...> lanes) {
  if constexpr (kWidth >= 1) {
    constexpr typename Vector64<T>::indices kRotated{((kLane + kWidth) % int(sizeof...(kLane)))...};
    combine(v, __builtin_shuffle(v, kRotated));
    fold_lanes<kWidth / 2, T>(v, combine, lanes);
  }
}

// combine(term(0), ..., term(n - 1)) (a max, a sum), first in one vector's lanes and then across
// them in halves, in registers: with an `omp simd` reduction GCC made the step across the lanes a
// chain of scalar operations through the stack, which on rows of 1-64 scores cost more than the
// row itself, and halving an array through memory still stalled on reading back parts of the
// vector just stored.
template <typename T, typename Term, typename Combine>
T reduce_in_lanes(int64_t n, T identity, Term term, Combine combine) {
  constexpr int kLanes = static_cast<int>(kVector<T>);
  T lanes[kLanes];
  for (int l = 0; l < kLanes; ++l) lanes[l] = identity;
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
#pragma omp simd
    for (int l = 0; l < kLanes; ++l) combine(lanes[l], term(j + l));
  // The rest as one whole vector, not an epilogue: GCC's scalar epilogue ran whole rows of up to
  // 15 scores, and a masked store into `lanes` stalled the vector read below.
  const int64_t rest = n - j;
#pragma omp simd
  for (int l = 0; l < kLanes; ++l) combine(lanes[l], l < rest ? term(j + l) : identity);
  typename Vector64<T>::type v;
  std::memcpy(&v, lanes, sizeof v);
  fold_lanes<kLanes / 2, T>(v, combine, std::make_integer_sequence<int, kLanes>{});
  return v[0];
}

// reduce_in_lanes's combine: into = combine(into, x), of scalars or vectors (in place, as a
// function returning a vector by value has a different ABI in the two copies of the loops).
const auto plus = [](auto& into, const auto& x) { into = into + x; };
const auto larger = [](auto& into, const auto& x) { into = x > into ? x : into; };

}  // namespace

bool blocked_applies(const Tensor& q, const Tensor& k) {
  // Keys to attend to, and a head's probability matrices small enough for scratch memory.
  return k.size(2) > 0 && q.size(2) > 0 && q.size(2) * padded(k.size(2), block_columns<float>()) <= (int64_t(1) << 22);
}

// Per head: scores for a block of query rows, their softmax (max, sum, log-sum-exp), then the
// block's output rows as probabilities times v.
void blocked_forward(const Tensor& q, const Tensor& k, const Tensor& v, bool causal, double scale, const Tensor& out,
                     const Tensor& lse) {
  const AttentionDims d = dims_of(q, k, v, causal);
  dispatch_floating(q.dtype(), "attention", [&](auto tag) {
    using T = decltype(tag);
    const int64_t keys_padded = padded(d.keys, block_columns<T>());
    const T s = static_cast<T>(scale);
    const bool own_tiles = std::is_same_v<T, float> && cpu_gemm::own_sgemm_runs();
    struct Scratch {
      std::vector<T> kt, v_storage, scores;  // kt [D][Sp] (padding zero), v padded if need be, one block's rows
    };
    const auto make = [&] {
      return Scratch{std::vector<T>(d.head_dim * keys_padded, T(0)), {}, std::vector<T>(kRowBlock * keys_padded)};
    };
    const HeadRows<T> q_rows = head_rows<T>(q), k_rows = head_rows<T>(k), v_rows = head_rows<T>(v);
    const HeadRows<T> out_rows = head_rows<T>(out), lse_rows = head_rows<T>(lse);
    for_each_head(d, make, [&](int64_t h, Scratch& scratch) {
      const T score_scale = s;  // a copy: through the captured reference GCC reloads it in every loop
      const T* q_head = q_rows.head(h);
      transpose_into(k_rows.head(h), d.keys, d.head_dim, k_rows.row_stride, scratch.kt.data(), keys_padded);
      int64_t v_ld = 0;
      const T* v_head = block_padded(v_rows.head(h), d.keys, d.value_dim, v_rows.row_stride, scratch.v_storage, v_ld);
      T* scores = scratch.scores.data();
      T* out_head = out_rows.head(h);
      T* lse_head = lse_rows.head(h);
      for (int64_t i0 = 0; i0 < d.queries; i0 += kRowBlock) {
        const int64_t rows = std::min(kRowBlock, d.queries - i0);
        const int64_t visible =
            block_products(own_tiles, d, q_head, q_rows.row_stride, scratch.kt.data(), keys_padded, i0, rows, scores);
        // Each step for all the block's rows before the next, so that the rows' chains of dependent
        // steps (max, exponentials, sum, log) overlap, and the logs run as one vector.
        T maxes[kRowBlock], sums[kRowBlock], inv_sums[kRowBlock];
        for (int64_t r = 0; r < rows; ++r) {
          const T* row = scores + r * keys_padded;
          const auto entry = [row](int64_t j) { return row[j]; };
          // The largest score (scale > 0 keeps the products' order).
          maxes[r] =
              score_scale * reduce_in_lanes(d.visible_keys(i0 + r), -std::numeric_limits<T>::infinity(), entry, larger);
        }
        for (int64_t r = 0; r < rows; ++r) {
          T* row = scores + r * keys_padded;
          const int64_t row_visible = d.visible_keys(i0 + r);
          // The exponentials written back as they are summed, and the masked entries 0. They stay
          // unnormalized; the output rows are divided by their sums instead (32 values, not 64).
          // (Not one loop with `j < row_visible ?`: GCC split that loop and left the halves scalar.)
          const T max = maxes[r];
          const auto exponential = [row, score_scale, max](int64_t j) {
            return row[j] = exp_approx(score_scale * row[j] - max);
          };
          sums[r] = reduce_in_lanes(row_visible, T(0), exponential, plus);
          std::fill(row + row_visible, row + visible, T(0));
        }
#pragma omp simd
        for (int64_t r = 0; r < rows; ++r) {
          lse_head[(i0 + r) * lse_rows.row_stride] = maxes[r] + log_of_positive(sums[r]);
          inv_sums[r] = T(1) / sums[r];
        }
        block_product<ALayout::Rows>(own_tiles, scores, keys_padded, rows, v_head, v_ld, visible, d.value_dim,
                                     out_head + i0 * out_rows.row_stride, out_rows.row_stride, inv_sums);
      }
    });
  });
}

// Per head: for each block of query rows, p (from the forward's log-sum-exp), dp = g v^T and
// ds = scale p (dp - D_i) into [T][Sp] matrices, and grad_q = ds k; then for each block of key
// rows grad_v = p^T g and grad_k = ds^T q over the queries that see them. Every head writes the
// same entries of p and ds (its visible scores); the others, which a key block may read, are
// those of keys its query cannot see and stay as made for the first head: zero (like kt's padding).
void blocked_backward(const Tensor& grad_out, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                      const Tensor& lse, bool causal, double scale, const Tensor& grad_q, const Tensor& grad_k,
                      const Tensor& grad_v) {
  const AttentionDims d = dims_of(q, k, v, causal);
  dispatch_floating(q.dtype(), "attention_backward", [&](auto tag) {
    using T = decltype(tag);
    const int64_t keys_padded = padded(d.keys, block_columns<T>());
    const T s = static_cast<T>(scale);
    const bool own_tiles = std::is_same_v<T, float> && cpu_gemm::own_sgemm_runs();
    struct Scratch {
      std::vector<T> kt, vt, p, ds, dp, k_storage, q_storage, g_storage;
    };
    const auto make = [&] {
      // kRowBlock entries of slack after p and ds: the last key block's products read that far
      // (ALayout::Columns).
      return Scratch{std::vector<T>(d.head_dim * keys_padded, T(0)),
                     std::vector<T>(d.value_dim * keys_padded, T(0)),
                     std::vector<T>(d.queries * keys_padded + kRowBlock, T(0)),
                     std::vector<T>(d.queries * keys_padded + kRowBlock, T(0)),
                     std::vector<T>(kRowBlock * keys_padded),
                     {},
                     {},
                     {}};
    };
    const HeadRows<T> q_rows = head_rows<T>(q), k_rows = head_rows<T>(k), v_rows = head_rows<T>(v),
                      g_rows = head_rows<T>(grad_out), o_rows = head_rows<T>(out), lse_rows = head_rows<T>(lse);
    const HeadRows<T> dq_rows = head_rows<T>(grad_q), dk_rows = head_rows<T>(grad_k), dv_rows = head_rows<T>(grad_v);
    for_each_head(d, make, [&](int64_t h, Scratch& scratch) {
      const T score_scale = s;  // a copy: through the captured reference GCC reloads it in every loop
      const T* q_head = q_rows.head(h);
      const T* g_head = g_rows.head(h);
      const T* o_head = o_rows.head(h);
      const T* lse_head = lse_rows.head(h);
      const int64_t ld_g = g_rows.row_stride;
      transpose_into(k_rows.head(h), d.keys, d.head_dim, k_rows.row_stride, scratch.kt.data(), keys_padded);
      transpose_into(v_rows.head(h), d.keys, d.value_dim, v_rows.row_stride, scratch.vt.data(), keys_padded);
      int64_t k_ld = 0, q_ld = 0, g_ld = 0;
      const T* k_padded = block_padded(k_rows.head(h), d.keys, d.head_dim, k_rows.row_stride, scratch.k_storage, k_ld);
      const T* q_padded = block_padded(q_head, d.queries, d.head_dim, q_rows.row_stride, scratch.q_storage, q_ld);
      const T* g_padded = block_padded(g_head, d.queries, d.value_dim, ld_g, scratch.g_storage, g_ld);
      T* dq_head = dq_rows.head(h);
      for (int64_t i0 = 0; i0 < d.queries; i0 += kRowBlock) {
        const int64_t rows = std::min(kRowBlock, d.queries - i0);
        T* p_block = scratch.p.data() + i0 * keys_padded;
        T* ds_block = scratch.ds.data() + i0 * keys_padded;
        const int64_t visible =
            block_products(own_tiles, d, q_head, q_rows.row_stride, scratch.kt.data(), keys_padded, i0, rows, p_block);
        block_product<ALayout::Rows>(own_tiles, g_head + i0 * ld_g, ld_g, rows, scratch.vt.data(), keys_padded,
                                     d.value_dim, visible, scratch.dp.data(), keys_padded);
        for (int64_t r = 0; r < rows; ++r) {
          T* p_row = p_block + r * keys_padded;
          T* ds_row = ds_block + r * keys_padded;
          const T* dp_row = scratch.dp.data() + r * keys_padded;
          const T* g_row = g_head + (i0 + r) * ld_g;
          const T* o_row = o_head + (i0 + r) * o_rows.row_stride;
          const T row_dot = reduce_in_lanes(
              d.value_dim, T(0), [g_row, o_row](int64_t c) { return g_row[c] * o_row[c]; }, plus);
          const T row_lse = lse_head[(i0 + r) * lse_rows.row_stride];
          const int64_t row_visible = d.visible_keys(i0 + r);
          // In whole vectors (to row_visible rounded up, within the row's padding), then the masked
          // entries 0: GCC ran the rest of each row, up to 15 exponentials, as scalar code.
          for (int64_t j0 = 0; j0 < row_visible; j0 += kVector<T>)
#pragma omp simd
            for (int64_t j = j0; j < j0 + kVector<T>; ++j) {
              const T p =
                  exp_approx(score_scale * p_row[j] - row_lse);  // the score's probability, p_row's from here on
              p_row[j] = p;
              ds_row[j] = score_scale * p * (dp_row[j] - row_dot);
            }
          std::fill(p_row + row_visible, p_row + padded(visible, kVector<T>), T(0));
          std::fill(ds_row + row_visible, ds_row + padded(visible, kVector<T>), T(0));
        }
        block_product<ALayout::Rows>(own_tiles, ds_block, keys_padded, rows, k_padded, k_ld, visible, d.head_dim,
                                     dq_head + i0 * dq_rows.row_stride, dq_rows.row_stride);
      }
      T* dk_head = dk_rows.head(h);
      T* dv_head = dv_rows.head(h);
      for (int64_t j0 = 0; j0 < d.keys; j0 += kRowBlock) {
        const int64_t rows = std::min(kRowBlock, d.keys - j0);
        // Queries before first_query(j0) see none of these keys: their p and ds are 0.
        const int64_t first = std::min(d.first_query(j0), d.queries);
        const int64_t depth = d.queries - first;
        block_product<ALayout::Columns>(own_tiles, scratch.p.data() + first * keys_padded + j0, keys_padded, rows,
                                        g_padded + first * g_ld, g_ld, depth, d.value_dim,
                                        dv_head + j0 * dv_rows.row_stride, dv_rows.row_stride);
        block_product<ALayout::Columns>(own_tiles, scratch.ds.data() + first * keys_padded + j0, keys_padded, rows,
                                        q_padded + first * q_ld, q_ld, depth, d.head_dim,
                                        dk_head + j0 * dk_rows.row_stride, dk_rows.row_stride);
      }
    });
  });
}

}  // namespace cpu_attention

void CpuBackend::attention(const Tensor& q, const Tensor& k, const Tensor& v, bool causal, double scale,
                           const Tensor& out, const Tensor& lse) {
  if (cpu_attention::blocked_applies(q, k)) return cpu_attention::blocked_forward(q, k, v, causal, scale, out, lse);
  cpu_attention::reference_forward(q, k, v, causal, scale, out, lse);
}

void CpuBackend::attention_backward(const Tensor& grad_out, const Tensor& q, const Tensor& k, const Tensor& v,
                                    const Tensor& out, const Tensor& lse, bool causal, double scale,
                                    const Tensor& grad_q, const Tensor& grad_k, const Tensor& grad_v) {
  if (cpu_attention::blocked_applies(q, k))
    return cpu_attention::blocked_backward(grad_out, q, k, v, out, lse, causal, scale, grad_q, grad_k, grad_v);
  cpu_attention::reference_backward(grad_out, q, k, v, out, lse, causal, scale, grad_q, grad_k, grad_v);
}

}  // namespace ml
