// Fused attention on the CPU: FlashAttention (Dao et al. 2022, "FlashAttention: Fast and
// Memory-Efficient Exact Attention with IO-Awareness", Algorithm 1 forward, Algorithm 2 backward)
// written as plain loops. It is the reference that backends/cuda/cuda_attention.cu follows, loop
// for loop: one query row (forward, grad_q) or one key row (grad_k, grad_v) per iteration, rows
// spread over OpenMP threads. No [T, S] matrix is ever stored: the forward keeps a running max
// and sum per row (the online softmax) and the backward recomputes each probability from q, k and
// the row's log-sum-exp.
//
// Notation, per head: s_ij = scale * q_i . k_j, p_ij = exp(s_ij - lse_i), o_i = sum_j p_ij v_j.
// With g_i = dL/do_i the backward is
//   dp_ij = g_i . v_j,   ds_ij = p_ij (dp_ij - D_i)   where D_i = sum_j p_ij dp_ij = g_i . o_i,
//   dq_i = scale sum_j ds_ij k_j,   dk_j = scale sum_i ds_ij q_i,   dv_j = sum_i p_ij g_i.
// grad_q is one pass over query rows and grad_k/grad_v a second pass over key rows: each output
// row belongs to one iteration, so threads never write the same row and no atomics are needed, at
// the price of computing every p_ij and ds_ij twice.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "framework/backends/cpu/cpu_backend.h"
#include "framework/backends/cpu/cpu_loops.h"

namespace ml {
using namespace cpu_loops;

namespace {

// Scores of one tile of keys live in a stack array; the running max is rescaled once per tile.
constexpr int64_t kKeyTile = 32;
// Causal rows differ in cost (row i sees i + 1 keys): threads take small chunks of rows in turn.
constexpr int64_t kRowsPerChunk = 8;

// The sizes of q [BH, T, D], k [BH, S, D], v [BH, S, Dv] and which keys each query sees.
struct AttentionDims {
  int64_t batch_heads, queries, keys, head_dim, value_dim;
  bool causal;
  // Query i sees keys [0, visible_keys(i)).
  int64_t visible_keys(int64_t i) const { return causal ? std::min(i + 1, keys) : keys; }
  // Key j is seen by queries [first_query(j), queries).
  int64_t first_query(int64_t j) const { return causal ? j : 0; }
};

AttentionDims dims_of(const Tensor& q, const Tensor& k, const Tensor& v, bool causal) {
  return {q.size(0), q.size(1), k.size(1), q.size(2), v.size(2), causal};
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

// Row i of head h of a contiguous [BH, rows, width] tensor (lse: width 1).
template <typename T>
struct HeadRows {
  T* data;
  int64_t rows, width;
  T* operator()(int64_t head, int64_t i) const { return data + (head * rows + i) * width; }
};

template <typename T>
HeadRows<T> head_rows(const Tensor& t) {
  return {t.data<T>(), t.size(1), t.dim() == 3 ? t.size(2) : 1};
}

template <typename T>
struct PairGrad {
  T p;
  T ds;
};

}  // namespace

// Algorithm 1 for one query row at a time: for each tile of visible keys, the tile's scores, a new
// running max m, then the running sum l and the unnormalized output rescaled by exp(m_old - m_new)
// before the tile's terms are added. out_i = acc / l and lse_i = m + log(l) at the end.
void CpuBackend::attention(const Tensor& q, const Tensor& k, const Tensor& v, bool causal, double scale,
                           const Tensor& out, const Tensor& lse) {
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
void CpuBackend::attention_backward(const Tensor& grad_out, const Tensor& q, const Tensor& k, const Tensor& v,
                                    const Tensor& out, const Tensor& lse, bool causal, double scale,
                                    const Tensor& grad_q, const Tensor& grad_k, const Tensor& grad_v) {
  const AttentionDims d = dims_of(q, k, v, causal);
  dispatch_floating(q.dtype(), "attention_backward", [&](auto tag) {
    using T = decltype(tag);
    const T s = static_cast<T>(scale);
    const HeadRows<T> q_rows = head_rows<T>(q), k_rows = head_rows<T>(k), v_rows = head_rows<T>(v),
                      g_rows = head_rows<T>(grad_out), out_rows = head_rows<T>(out), lse_rows = head_rows<T>(lse),
                      dq_rows = head_rows<T>(grad_q), dk_rows = head_rows<T>(grad_k), dv_rows = head_rows<T>(grad_v);
    std::vector<T> row_dots_data(static_cast<size_t>(d.batch_heads * d.queries));
    const HeadRows<T> row_dots{row_dots_data.data(), d.queries, 1};
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

}  // namespace ml
