// CPU kernels for softmax, layer/RMS normalization and cross-entropy, each forward beside its
// backward. Every kernel sees a contiguous tensor as rows of its last dim (the op moved the
// normalized dim last) and runs one row per loop iteration, rows spread over OpenMP threads.
// Row sums accumulate in double, or in 32 float partial sums added up in double (sum_in_lanes)
// where the loop must vectorize: float32 rows then lose no precision to long sums.
#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "framework/backends/cpu/cpu_backend.h"
#include "framework/backends/cpu/cpu_loops.h"
#include "framework/backends/elementwise_math.h"

namespace ml {
using namespace cpu_loops;
using elementwise::exp_approx;
using elementwise::exp_of_nonpositive_term;

namespace {

// A contiguous tensor seen as `rows` rows of its last dim, `n` elements each.
struct Rows {
  int64_t rows = 0;
  int64_t n = 0;
  bool parallel() const { return rows > 1 && rows * n >= kParallelGrain; }
};
Rows rows_of(const Tensor& t) {
  const int64_t n = t.dim() == 0 ? 1 : t.size(-1);
  return {n == 0 ? 0 : t.numel() / n, n};
}

// Written as a comparison, which GCC turns into vmaxps (a NaN x[j] is skipped either way): with
// std::max it left the loop scalar, one dependent vmaxss per element, 40% of softmax's time.
// Floats in one AVX register: the unit the softmax rounds its rows' visible length up to.
constexpr int64_t kVectorFloats = 8;

template <typename T>
T row_max(const T* x, int64_t n) {
  T m = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : m)
  for (int64_t j = 0; j < n; ++j) m = x[j] > m ? x[j] : m;
  return m;
}

template <typename T>
double row_sum(const T* x, int64_t n) {
  double s = 0.0;
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < n; ++j) s += x[j];
  return s;
}

template <typename T>
double row_dot(const T* a, const T* b, int64_t n) {
  double s = 0.0;
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < n; ++j) s += double(a[j]) * double(b[j]);
  return s;
}

// sum_j x[j]^2. (A 3072x768 matrix is memory-bound, and its time varies with what ran before:
// docs/optimizers.md, RMNP.)
template <typename T>
double row_sum_of_squares(const T* x, int64_t n) {
  return sum_in_lanes<T>(n, [x](int64_t j) { return x[j] * x[j]; });
}

// sum_j exp(x[j] - shift): the normalizer of a max-shifted softmax (each term is at most 1, so
// nothing overflows). Straight-line arithmetic, not libm's opaque expf, so that the loop vectorizes.
template <typename T>
double sum_exp_shifted(const T* x, int64_t n, T shift) {
  return sum_in_lanes<T>(n, [x, shift](int64_t j) { return exp_of_nonpositive_term(x[j] - shift); });
}

// sum_exp_shifted, while asking the memory for `next` (n elements, or nothing when null) a part at a
// time. A long row's max is the pass that reads it from memory, its exponentials then run from
// cache, computing while the memory waits: the next row's lines requested meanwhile are in cache
// when its max pass comes (cross-entropy's forward at [2048, 8192], one thread: 4.7-5.0 -> 4.3-4.6 ms).
// They are requested into L2, not L1: at 8192 classes the next row (32 KB) and the row being summed
// do not both fit in a 48 KB L1.
template <typename T>
double sum_exp_shifted_fetching(const T* x, int64_t n, T shift, const T* next) {
  constexpr int64_t kPart = 1024;  // elements per part: 64 cache lines of float
  constexpr int64_t kLine = 64 / sizeof(T);
  double sum = 0.0;
  for (int64_t start = 0; start < n; start += kPart) {
    const int64_t length = std::min(kPart, n - start);
    if (next)
      for (int64_t j = 0; j < length; j += kLine) __builtin_prefetch(next + start + j, 0, 2);
    sum += sum_exp_shifted(x + start, length, shift);
  }
  return sum;
}

}  // namespace

// row_body(xi, yi, n, i) for every row i of x (its last dim, n long) and the same row of y, in x's
// floating dtype (T = the pointee of yi), in parallel when the work is large enough, in the widest
// vectors the processor has (softmax's exponentials, a row norm's squares).
template <typename RowBody>
void map_rows(const char* op, const Tensor& x, const Tensor& y, RowBody&& row_body) {
  const Rows r = rows_of(x);
  dispatch_floating(x.dtype(), op, [&](auto tag) {
    using T = decltype(tag);
    const T* px = x.data<T>();
    T* py = y.data<T>();
    parallel_for_widest(r.rows, r.parallel(), [&](int64_t i) { row_body(px + i * r.n, py + i * r.n, r.n, i); });
  });
}

// ---------------------------------------------------------------------------------- softmax

// y = softmax(x) or log_softmax(x) per row. Causal: row i of each [T,T] slice keeps columns
// 0..i; the masked columns are written directly (probability 0, log-probability -inf) instead
// of adding -inf to the logits, so no infinity enters the arithmetic.
void CpuBackend::softmax(const Tensor& x, const Tensor& y, bool log, bool causal) {
  const int64_t slice_rows = causal ? x.size(-2) : 1;
  map_rows("softmax", x, y, [&](const auto* xi, auto* yi, int64_t n, int64_t i) {
    using T = std::remove_pointer_t<decltype(yi)>;
    const int64_t visible = causal ? i % slice_rows + 1 : n;
    const T shift = row_max(xi, visible);
    if (log) {
      const T log_total = static_cast<T>(std::log(sum_exp_shifted(xi, visible, shift)));
      for (int64_t j = 0; j < visible; ++j) yi[j] = xi[j] - shift - log_total;
      std::fill(yi + visible, yi + n, -std::numeric_limits<T>::infinity());
    } else {
      // The visible entries rounded up to whole vectors (within the row), the masked ones among
      // them set to 0: the short rows of causal attention (1 to 64 entries at the GPT's block)
      // then run as vector code without scalar remainders, which took most of their time.
      const int64_t end = std::min(n, (visible + kVectorFloats - 1) / kVectorFloats * kVectorFloats);
#pragma omp simd
      for (int64_t j = 0; j < end; ++j) {
        const T e = exp_approx(xi[j] - shift);
        yi[j] = j < visible ? e : T(0);
      }
      const T inv_total = static_cast<T>(1.0 / sum_in_lanes<T>(end, [yi](int64_t j) { return yi[j]; }));
#pragma omp simd
      for (int64_t j = 0; j < end; ++j) yi[j] *= inv_total;
      std::fill(yi + end, yi + n, T(0));
    }
  });
}

// softmax:     dx_j = y_j (g_j - sum_k g_k y_k)
// log_softmax: dx_j = g_j - exp(y_j) sum_k g_k
// An entry with log-probability -inf (causally masked) is a constant: it gets no gradient and
// its g_k does not count in the sum. Masked softmax entries need no such care, since y_j = 0.
void CpuBackend::softmax_backward(const Tensor& grad_y, const Tensor& y, const Tensor& grad_x, bool log) {
  const Rows r = rows_of(y);
  dispatch_floating(y.dtype(), "softmax_backward", [&](auto tag) {
    using T = decltype(tag);
    const T* pg = grad_y.data<T>();
    const T* py = y.data<T>();
    T* pdx = grad_x.data<T>();
    constexpr T minus_inf = -std::numeric_limits<T>::infinity();
    parallel_for_widest(r.rows, r.parallel(), [&](int64_t i) {
      const T* gi = pg + i * r.n;
      const T* yi = py + i * r.n;
      T* dxi = pdx + i * r.n;
      if (log) {
        double g_total = 0.0;
        for (int64_t j = 0; j < r.n; ++j)
          if (yi[j] != minus_inf) g_total += gi[j];
        const T gt = static_cast<T>(g_total);
        for (int64_t j = 0; j < r.n; ++j) dxi[j] = yi[j] == minus_inf ? T(0) : gi[j] - exp_approx(yi[j]) * gt;
      } else {
        const T dot = static_cast<T>(row_dot(gi, yi, r.n));
#pragma omp simd
        for (int64_t j = 0; j < r.n; ++j) dxi[j] = yi[j] * (gi[j] - dot);
      }
    });
  });
}

// ---------------------------------------------------------------------------------- normalization

namespace {

// Runs row_body(i) for every row i (grad_x's pass), and sums the affine gradients' terms down the
// columns: column_terms(i, c, w, b) adds row i's terms of column c to w and b (w += g[i,c] *
// xhat[i,c] and b += g[i,c] for layer norm). The rows fall into at most 64 chunks fixed by the shape
// alone; each chunk sums blocks of kRowsPerBlock rows in T, adds each block's sums to its own in
// double, in order, and the chunks' sums are added in chunk order: the same result on any number of
// threads. A block's rows are summed after their row bodies ran, kColumns columns at a time in
// registers, down the block (its rows are still in L1 or L2): adding every row into a block of
// per-column sums in memory instead loaded and stored both sums for every value, which cost layer
// norm's backward at [16384, 1024] 5-10 ms on top of grad_x's 8-14 (one thread; 2-3 ms this way,
// with the same bits; 16 columns at a time: 3-4 ms, 64 or 128: as 32). (Walking tiles of 16
// columns down all the rows of the chunk instead read a new page per row: that backward ran at
// about 20% of the copy bandwidth. Adding every row's terms to double sums, converted, cost a
// third more than the rest of that backward in cache.)
template <typename T, typename RowBody, typename ColumnTerms>
void for_rows_with_column_sums(Rows r, T* grad_weight, T* grad_bias, RowBody&& row_body, ColumnTerms&& column_terms) {
  constexpr int64_t kMaxChunks = 64, kRowsPerBlock = 16, kColumns = 32;
  const int64_t rows_per_chunk = std::max<int64_t>(1, (r.rows + kMaxChunks - 1) / kMaxChunks);
  const int64_t chunks = (r.rows + rows_per_chunk - 1) / rows_per_chunk;
  const bool summing = grad_weight || grad_bias;
  std::vector<double> partial(summing ? static_cast<size_t>(2 * chunks * r.n) : 0, 0.0);  // [chunk][w, b][n]
  parallel_for_widest(chunks, r.parallel() && chunks > 1, [&](int64_t chunk) {
    double* sum = summing ? partial.data() + 2 * chunk * r.n : nullptr;
    // Columns [first_column, first_column + width) of rows [first_row, end_row), added to sum.
    const auto add_block = [&](int64_t first_row, int64_t end_row, int64_t first_column, int64_t width) {
      T w[kColumns] = {}, b[kColumns] = {};
      for (int64_t i = first_row; i < end_row; ++i)
#pragma omp simd
        for (int64_t l = 0; l < width; ++l) column_terms(i, first_column + l, w[l], b[l]);
      for (int64_t l = 0; l < width; ++l) {
        sum[first_column + l] += double(w[l]);
        sum[r.n + first_column + l] += double(b[l]);
      }
    };
    const int64_t begin = chunk * rows_per_chunk, end = std::min(r.rows, begin + rows_per_chunk);
    for (int64_t first_row = begin; first_row < end; first_row += kRowsPerBlock) {
      const int64_t end_row = std::min(end, first_row + kRowsPerBlock);
      for (int64_t i = first_row; i < end_row; ++i) row_body(i);
      if (!summing) continue;
      int64_t first_column = 0;
      for (; first_column + kColumns <= r.n; first_column += kColumns)
        add_block(first_row, end_row, first_column, kColumns);
      if (first_column < r.n) add_block(first_row, end_row, first_column, r.n - first_column);
    }
  });
  if (!summing) return;
  std::vector<double> total(2 * r.n, 0.0);
  for (int64_t chunk = 0; chunk < chunks; ++chunk)
    for (int64_t c = 0; c < 2 * r.n; ++c) total[c] += partial[chunk * 2 * r.n + c];
  for (int64_t c = 0; c < r.n; ++c) {
    if (grad_weight) grad_weight[c] = static_cast<T>(total[c]);
    if (grad_bias) grad_bias[c] = static_cast<T>(total[r.n + c]);
  }
}

// A norm's weight, or ones where it has none, so that the loops read w[j] unconditionally: with
// `w ? w[j] : 1` inside, GCC left layer norm's backward reduction scalar.
template <typename T>
class WeightOrOnes {
 public:
  WeightOrOnes(const Tensor& weight, int64_t n)
      : ones_(weight.defined() ? 0 : static_cast<size_t>(n), T(1)),
        data_(weight.defined() ? weight.data<T>() : ones_.data()) {}
  const T* data() const { return data_; }

 private:
  std::vector<T> ones_;
  const T* data_;
};

template <typename T>
const T* data_or_null(const Tensor& t) {
  return t.defined() ? t.data<T>() : nullptr;
}
template <typename T>
T* mutable_data_or_null(const Tensor& t) {
  return t.defined() ? t.data<T>() : nullptr;
}

}  // namespace

// y = (x - mean) * rstd * weight + bias with the biased variance, rstd = 1 / sqrt(var + eps).
// The variance is taken around the mean in a second pass (the row is in cache), which avoids
// the cancellation of E[x^2] - E[x]^2.
void CpuBackend::layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps, const Tensor& y,
                            const Tensor& mean, const Tensor& rstd) {
  const Rows r = rows_of(x);
  dispatch_floating(x.dtype(), "layer_norm", [&](auto tag) {
    using T = decltype(tag);
    const T* px = x.data<T>();
    const WeightOrOnes<T> weight_or_ones(weight, r.n);
    const T* w = weight_or_ones.data();
    const T* b = data_or_null<T>(bias);
    T* py = y.data<T>();
    T* pmean = mean.data<T>();
    T* prstd = rstd.data<T>();
    parallel_for_widest(r.rows, r.parallel(), [&](int64_t i) {
      const T* xi = px + i * r.n;
      T* yi = py + i * r.n;
      const double mu = row_sum(xi, r.n) / double(r.n);
      double var = 0.0;
#pragma omp simd reduction(+ : var)
      for (int64_t j = 0; j < r.n; ++j) var += (xi[j] - mu) * (xi[j] - mu);
      const T m = static_cast<T>(mu), s = static_cast<T>(1.0 / std::sqrt(var / double(r.n) + eps));
      pmean[i] = m;
      prstd[i] = s;
#pragma omp simd
      for (int64_t j = 0; j < r.n; ++j) yi[j] = (xi[j] - m) * s * w[j] + (b ? b[j] : T(0));
    });
  });
}

// With xhat = (x - mean) * rstd and h = g * weight (the gradient reaching xhat):
//   dx = rstd * (h - mean(h) - xhat * mean(h * xhat))
// (the two means remove the components along the directions that normalization projects out).
void CpuBackend::layer_norm_backward(const Tensor& grad_y, const Tensor& x, const Tensor& weight, const Tensor& mean,
                                     const Tensor& rstd, const Tensor& grad_x, const Tensor& grad_weight,
                                     const Tensor& grad_bias) {
  const Rows r = rows_of(x);
  dispatch_floating(x.dtype(), "layer_norm_backward", [&](auto tag) {
    using T = decltype(tag);
    const T* pg = grad_y.data<T>();
    const T* px = x.data<T>();
    const WeightOrOnes<T> weight_or_ones(weight, r.n);
    const T* w = weight_or_ones.data();
    const T* pmean = mean.data<T>();
    const T* prstd = rstd.data<T>();
    T* pdx = mutable_data_or_null<T>(grad_x);
    for_rows_with_column_sums(
        r, mutable_data_or_null<T>(grad_weight), mutable_data_or_null<T>(grad_bias),
        [&](int64_t i) {
          if (!pdx) return;
          const T* gi = pg + i * r.n;
          const T* xi = px + i * r.n;
          const T m = pmean[i], s = prstd[i];
          T* dxi = pdx + i * r.n;
          // In lanes: one double sum of float terms did not vectorize (GCC left it scalar: 60%
          // of the backward's time at the GPT's [768, 128]). Both sums in one pass over the
          // row.
          const std::array<double, 2> sums = sums_in_lanes<T, 2>(r.n, [&](int64_t j, T(&terms)[2]) {
            terms[0] = gi[j] * w[j];
            terms[1] = terms[0] * ((xi[j] - m) * s);
          });
          const T h_mean = static_cast<T>(sums[0] / double(r.n)), h_xhat_mean = static_cast<T>(sums[1] / double(r.n));
#pragma omp simd
          for (int64_t j = 0; j < r.n; ++j) dxi[j] = s * (gi[j] * w[j] - h_mean - (xi[j] - m) * s * h_xhat_mean);
        },
        [&](int64_t i, int64_t c, T& sum_w, T& sum_b) {
          const T g = pg[i * r.n + c];
          sum_w += g * ((px[i * r.n + c] - pmean[i]) * prstd[i]);
          sum_b += g;
        });
  });
}

// y = x * rstd * weight, rstd = 1 / sqrt(mean(x^2) + eps).
void CpuBackend::rms_norm(const Tensor& x, const Tensor& weight, double eps, const Tensor& y, const Tensor& rstd) {
  const Rows r = rows_of(x);
  dispatch_floating(x.dtype(), "rms_norm", [&](auto tag) {
    using T = decltype(tag);
    const T* px = x.data<T>();
    const WeightOrOnes<T> weight_or_ones(weight, r.n);
    const T* w = weight_or_ones.data();
    T* py = y.data<T>();
    T* prstd = rstd.data<T>();
    parallel_for(r.rows, r.parallel(), [&](int64_t i) {
      const T* xi = px + i * r.n;
      T* yi = py + i * r.n;
      const T s = static_cast<T>(1.0 / std::sqrt(row_dot(xi, xi, r.n) / double(r.n) + eps));
      prstd[i] = s;
#pragma omp simd
      for (int64_t j = 0; j < r.n; ++j) yi[j] = xi[j] * s * w[j];
    });
  });
}

// With xhat = x * rstd and h = g * weight: dx = rstd * (h - xhat * mean(h * xhat)).
void CpuBackend::rms_norm_backward(const Tensor& grad_y, const Tensor& x, const Tensor& weight, const Tensor& rstd,
                                   const Tensor& grad_x, const Tensor& grad_weight) {
  const Rows r = rows_of(x);
  dispatch_floating(x.dtype(), "rms_norm_backward", [&](auto tag) {
    using T = decltype(tag);
    const T* pg = grad_y.data<T>();
    const T* px = x.data<T>();
    const WeightOrOnes<T> weight_or_ones(weight, r.n);
    const T* w = weight_or_ones.data();
    const T* prstd = rstd.data<T>();
    T* pdx = mutable_data_or_null<T>(grad_x);
    for_rows_with_column_sums<T>(
        r, mutable_data_or_null<T>(grad_weight), nullptr,
        [&](int64_t i) {
          if (!pdx) return;
          const T* gi = pg + i * r.n;
          const T* xi = px + i * r.n;
          const T s = prstd[i];
          T* dxi = pdx + i * r.n;
          const double h_xhat_sum = sum_in_lanes<T>(r.n, [&](int64_t j) { return gi[j] * w[j] * (xi[j] * s); });
          const T h_xhat_mean = static_cast<T>(h_xhat_sum / double(r.n));
#pragma omp simd
          for (int64_t j = 0; j < r.n; ++j) dxi[j] = s * (gi[j] * w[j] - xi[j] * s * h_xhat_mean);
        },
        [&](int64_t i, int64_t c, T& sum_w, T& /* no bias */) {
          sum_w += pg[i * r.n + c] * (px[i * r.n + c] * prstd[i]);
        });
  });
}

void CpuBackend::normalize_rows(const Tensor& x, double scale, double eps, const Tensor& y) {
  map_rows("normalize_rows", x, y, [&](const auto* xi, auto* yi, int64_t n, int64_t) {
    using T = std::remove_pointer_t<decltype(yi)>;
    const T s = static_cast<T>(scale / std::max(std::sqrt(row_sum_of_squares(xi, n)), eps));
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) yi[j] = xi[j] * s;
  });
}

// ---------------------------------------------------------------------------------- cross-entropy

namespace {

// Checked before the parallel loops: an exception must not escape an OpenMP region.
void check_targets(const int64_t* targets, int64_t rows, int64_t classes, int64_t ignore_index) {
  for (int64_t i = 0; i < rows; ++i)
    if (targets[i] != ignore_index && (targets[i] < 0 || targets[i] >= classes))
      throw std::out_of_range("cross_entropy: target " + std::to_string(targets[i]) + " at position " +
                              std::to_string(i) + " is out of range for " + std::to_string(classes) +
                              " classes (ignore_index " + std::to_string(ignore_index) + ")");
}

}  // namespace

// With lse = log sum_c exp(x_c) and smoothing e over C classes (PyTorch's definition):
//   loss = (1 - e) * (lse - x_t) + e * mean_c(lse - x_c) = lse - (1 - e) x_t - e mean_c(x_c)
void CpuBackend::cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index,
                               double label_smoothing, const Tensor& losses, const Tensor& row_stats) {
  const Rows r = rows_of(logits);
  const int64_t* pt = targets.data<int64_t>();
  check_targets(pt, r.rows, r.n, ignore_index);
  dispatch_floating(logits.dtype(), "cross_entropy", [&](auto tag) {
    using T = decltype(tag);
    const T* px = logits.data<T>();
    T* pl = losses.data<T>();
    double* stats = row_stats.data<double>();
    parallel_for_widest(r.rows, r.parallel(), [&](int64_t i) {
      if (pt[i] == ignore_index) {
        pl[i] = T(0);
        stats[2 * i] = stats[2 * i + 1] = 0.0;
        return;
      }
      const T* xi = px + i * r.n;
      const T shift = row_max(xi, r.n);
      const double total = sum_exp_shifted_fetching(xi, r.n, shift, i + 1 < r.rows ? xi + r.n : nullptr);
      const double lse = double(shift) + std::log(total);
      const double smooth = label_smoothing > 0 ? label_smoothing * row_sum(xi, r.n) / double(r.n) : 0.0;
      pl[i] = static_cast<T>(lse - (1.0 - label_smoothing) * double(xi[pt[i]]) - smooth);
      stats[2 * i] = double(shift);
      stats[2 * i + 1] = total;
    });
  });
}

// d loss / d x_c = softmax_c - (1 - e) [c == t] - e / C, scaled by the row's incoming gradient.
// softmax_c = exp(x_c - m) / sum with the forward's row max m and sum: one pass of exp() over the
// row, and no [N, C] probability tensor kept alive between the passes.
void CpuBackend::cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& row_stats,
                                        int64_t ignore_index, double label_smoothing, const Tensor& grad_losses,
                                        const Tensor& grad_logits) {
  const Rows r = rows_of(logits);
  const int64_t* pt = targets.data<int64_t>();
  dispatch_floating(logits.dtype(), "cross_entropy_backward", [&](auto tag) {
    using T = decltype(tag);
    const T* px = logits.data<T>();
    const double* stats = row_stats.data<double>();
    const T* pgl = grad_losses.data<T>();
    T* pdx = grad_logits.data<T>();
    parallel_for_widest(r.rows, r.parallel(), [&](int64_t i) {
      const T* xi = px + i * r.n;
      T* dxi = pdx + i * r.n;
      if (pt[i] == ignore_index) {
        std::fill(dxi, dxi + r.n, T(0));
        return;
      }
      const T shift = static_cast<T>(stats[2 * i]);  // the row's max, a T value
      const T g = pgl[i];
      const T g_over_total = static_cast<T>(double(g) / stats[2 * i + 1]);
      const T g_smooth = static_cast<T>(double(g) * label_smoothing / double(r.n));
#pragma omp simd
      for (int64_t j = 0; j < r.n; ++j) dxi[j] = exp_approx(xi[j] - shift) * g_over_total - g_smooth;
      dxi[pt[i]] -= static_cast<T>(double(g) * (1.0 - label_smoothing));
    });
  });
}

}  // namespace ml
