// Softmax, layer/RMS normalization and cross-entropy: one block per row, the same formulas and
// contracts as backends/cpu/cpu_nn.cpp (see the derivations there).
#include <algorithm>
#include <cuda/std/limits>
#include <string>

#include "framework/backends/cuda/cuda_backend_impl.cuh"
#include "framework/backends/cuda/cuda_common.cuh"

namespace ml {
using namespace cuda_detail;

namespace {

constexpr int kRowThreads = 128;
constexpr int kRowWarps = kRowThreads / 32;

// The kernels below accumulate in RowAccumulator<T> (cuda_common.cuh): float for float32 rows,
// double for float64.

template <typename T>
constexpr T minus_inf() {
  return -cuda::std::numeric_limits<T>::infinity();
}

// Causal: row r is query r % T of its [T, T] slice and sees columns 0..r % T; r is the global row.
template <typename T>
__global__ void softmax_kernel(const T* x, T* y, int64_t n, int64_t seq_len, bool log, bool causal) {
  using Acc = RowAccumulator<T>;
  __shared__ Acc scratch[kRowWarps];
  const int64_t row = blockIdx.x;
  const T* xi = x + row * n;
  T* yi = y + row * n;
  const int64_t visible = causal ? row % seq_len + 1 : n;
  Acc m = minus_inf<Acc>();
  for (int64_t j = threadIdx.x; j < visible; j += blockDim.x) m = fmax(m, Acc(xi[j]));
  m = block_max(m, scratch);
  Acc total = 0;
  for (int64_t j = threadIdx.x; j < visible; j += blockDim.x) total += exp(Acc(xi[j]) - m);
  total = block_sum(total, scratch);
  const Acc log_total = ::log(total);
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
    if (j >= visible) yi[j] = log ? minus_inf<T>() : T(0);
    else yi[j] = log ? T(Acc(xi[j]) - m - log_total) : T(exp(Acc(xi[j]) - m) / total);
  }
}

template <typename T>
__global__ void softmax_backward_kernel(const T* g, const T* y, T* dx, int64_t n, bool log) {
  using Acc = RowAccumulator<T>;
  __shared__ Acc scratch[kRowWarps];
  const int64_t row = blockIdx.x;
  const T *gi = g + row * n, *yi = y + row * n;
  T* dxi = dx + row * n;
  Acc acc = 0;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x)
    if (!log) acc += Acc(gi[j]) * Acc(yi[j]);
    else if (yi[j] != minus_inf<T>()) acc += gi[j];
  acc = block_sum(acc, scratch);
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x)
    if (log) dxi[j] = yi[j] == minus_inf<T>() ? T(0) : T(gi[j] - exp(Acc(yi[j])) * acc);
    else dxi[j] = T(Acc(yi[j]) * (Acc(gi[j]) - acc));
}

// mean may be null (RMS norm). Row statistics in two passes over the row (the variance around
// the mean, which avoids the cancellation of E[x^2] - E[x]^2).
template <typename T>
__global__ void norm_kernel(const T* x, const T* w, const T* b, T* y, T* mean, T* rstd, int64_t n, double eps,
                            bool centered) {
  using Acc = RowAccumulator<T>;
  __shared__ Acc scratch[kRowWarps];
  const int64_t row = blockIdx.x;
  const T* xi = x + row * n;
  T* yi = y + row * n;
  Acc mu = 0;
  if (centered) {
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) mu += xi[j];
    mu = block_sum(mu, scratch) / Acc(n);
  }
  Acc var = 0;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) var += (Acc(xi[j]) - mu) * (Acc(xi[j]) - mu);
  var = block_sum(var, scratch) / Acc(n);
  const T m = T(mu), s = T(Acc(1) / sqrt(var + Acc(eps)));
  if (threadIdx.x == 0) {
    if (mean) mean[row] = m;
    rstd[row] = s;
  }
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x)
    yi[j] = (xi[j] - m) * s * (w ? w[j] : T(1)) + (b ? b[j] : T(0));
}

// One block a row: the row's sum of squares, then the row scaled by scale / max(norm, eps).
template <typename T>
__global__ void normalize_rows_kernel(const T* x, T* y, int64_t n, double scale, double eps) {
  using Acc = RowAccumulator<T>;
  __shared__ Acc scratch[kRowWarps];
  const int64_t row = blockIdx.x;
  const T* xi = x + row * n;
  T* yi = y + row * n;
  Acc squares = 0;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) squares += Acc(xi[j]) * Acc(xi[j]);
  squares = block_sum(squares, scratch);
  const T s = T(Acc(scale) / fmax(sqrt(squares), Acc(eps)));
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) yi[j] = xi[j] * s;
}

template <typename T>
__global__ void norm_backward_kernel(const T* g, const T* x, const T* w, const T* mean, const T* rstd, T* dx,
                                     int64_t n) {
  using Acc = RowAccumulator<T>;
  __shared__ Acc scratch[kRowWarps];
  const int64_t row = blockIdx.x;
  const T *gi = g + row * n, *xi = x + row * n;
  T* dxi = dx + row * n;
  const T m = mean ? mean[row] : T(0), s = rstd[row];
  Acc h_sum = 0, h_xhat = 0;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
    const Acc h = Acc(gi[j]) * (w ? Acc(w[j]) : Acc(1));
    h_sum += h;
    h_xhat += h * Acc((xi[j] - m) * s);
  }
  h_sum = mean ? block_sum(h_sum, scratch) / Acc(n) : Acc(0);
  h_xhat = block_sum(h_xhat, scratch) / Acc(n);
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x)
    dxi[j] = T(Acc(s) * (Acc(gi[j]) * (w ? Acc(w[j]) : Acc(1)) - h_sum - Acc((xi[j] - m) * s) * h_xhat));
}

// The weight and bias gradients are column sums over every row: grad_weight[c] = sum_i g[i, c] *
// xhat[i, c], grad_bias[c] = sum_i g[i, c]. One thread per column walking all rows would leave
// the GPU idle (a 768-wide norm is 768 threads), so the rows are cut into at most kMaxRowTiles
// tiles: a block of kTileColumns x kTileRowLanes threads sums one tile's rows for kTileColumns
// columns into a partial sum per tile, then affine_grad_totals_kernel adds each column's
// partials in tile order. No atomics, and the tiling depends only on the shape, so the sums are
// the same on every run.
constexpr int kTileColumns = 32, kTileRowLanes = 8;
constexpr int64_t kMinTileRows = 64, kMaxRowTiles = 256;

// Block (tile, column tile): lane y of column c sums rows first + y, first + y + kTileRowLanes,
// ... of the tile, then lane 0 adds the lanes in order. Partials are [tiles, n] for the weight,
// then [tiles, n] for the bias.
template <typename T>
__global__ void affine_grad_partials_kernel(const T* g, const T* x, const T* mean, const T* rstd, int64_t rows,
                                            int64_t n, int64_t tile_rows, RowAccumulator<T>* partial_w,
                                            RowAccumulator<T>* partial_b) {
  using Acc = RowAccumulator<T>;
  __shared__ Acc lane_w[kTileRowLanes][kTileColumns], lane_b[kTileRowLanes][kTileColumns];
  const int64_t c = blockIdx.y * int64_t(kTileColumns) + threadIdx.x;
  const int64_t first = blockIdx.x * tile_rows, last = min(rows, first + tile_rows);
  Acc acc_w = 0, acc_b = 0;
  if (c < n)
    for (int64_t i = first + threadIdx.y; i < last; i += kTileRowLanes) {
      const T gv = g[i * n + c];
      acc_w += Acc(gv) * Acc((x[i * n + c] - (mean ? mean[i] : T(0))) * rstd[i]);
      acc_b += gv;
    }
  lane_w[threadIdx.y][threadIdx.x] = acc_w;
  lane_b[threadIdx.y][threadIdx.x] = acc_b;
  __syncthreads();
  if (threadIdx.y != 0 || c >= n) return;
  for (int lane = 1; lane < kTileRowLanes; ++lane) {
    acc_w += lane_w[lane][threadIdx.x];
    acc_b += lane_b[lane][threadIdx.x];
  }
  partial_w[blockIdx.x * n + c] = acc_w;
  partial_b[blockIdx.x * n + c] = acc_b;
}

template <typename T>
__global__ void affine_grad_totals_kernel(const RowAccumulator<T>* partial_w, const RowAccumulator<T>* partial_b,
                                          int64_t tiles, int64_t n, T* grad_weight, T* grad_bias) {
  for (int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; c < n; c += int64_t(gridDim.x) * blockDim.x) {
    RowAccumulator<T> acc_w = 0, acc_b = 0;
    for (int64_t tile = 0; tile < tiles; ++tile) {
      acc_w += partial_w[tile * n + c];
      acc_b += partial_b[tile * n + c];
    }
    if (grad_weight) grad_weight[c] = T(acc_w);
    if (grad_bias) grad_bias[c] = T(acc_b);
  }
}

template <typename T>
__global__ void cross_entropy_kernel(const T* logits, const int64_t* targets, int64_t n, int64_t ignore_index,
                                     double smoothing, T* losses, double* row_stats, const T* grad_losses,
                                     T* grad_logits, BadIndexSlot bad) {
  using Acc = RowAccumulator<T>;
  __shared__ Acc scratch[kRowWarps];
  const int64_t row = blockIdx.x;
  const T* xi = logits + row * n;
  const int64_t t = targets[row];
  // The whole block takes the same branch (one row, one target), so returning skips no barrier.
  // An ignored row contributes 0; a bad target NaN, so that nothing computed from it looks valid
  // before the error is reported.
  if (t == ignore_index || !index_in_range(t, n, IndexUse::CrossEntropyTarget, bad)) {
    const T fill = t == ignore_index ? T(0) : T(NAN);
    if (losses && threadIdx.x == 0) {
      losses[row] = fill;
      row_stats[2 * row] = row_stats[2 * row + 1] = double(fill);
    }
    if (grad_logits)
      for (int64_t j = threadIdx.x; j < n; j += blockDim.x) grad_logits[row * n + j] = fill;
    return;
  }
  const Acc smooth = Acc(smoothing);
  if (grad_logits) {  // backward: softmax from the forward's row max and sum, one pass over the row
    const Acc g = grad_losses[row], m = Acc(row_stats[2 * row]), total = Acc(row_stats[2 * row + 1]);
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x)
      grad_logits[row * n + j] =
          T(g * (exp(Acc(xi[j]) - m) / total - smooth / Acc(n) - (j == t ? Acc(1) - smooth : Acc(0))));
    return;
  }
  Acc m = minus_inf<Acc>(), sum_x = 0;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
    m = fmax(m, Acc(xi[j]));
    sum_x += xi[j];
  }
  m = block_max(m, scratch);
  sum_x = block_sum(sum_x, scratch);
  Acc total = 0;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) total += exp(Acc(xi[j]) - m);
  total = block_sum(total, scratch);
  if (threadIdx.x == 0) {
    losses[row] = T(m + log(total) - (Acc(1) - smooth) * Acc(xi[t]) - smooth * sum_x / Acc(n));
    row_stats[2 * row] = double(m);
    row_stats[2 * row + 1] = double(total);
  }
}

int64_t last_dim(const Tensor& t) { return t.dim() == 0 ? 1 : t.size(-1); }
int64_t rows_of(const Tensor& t) { return last_dim(t) == 0 ? 0 : t.numel() / last_dim(t); }

template <typename T>
const T* opt(const Tensor& t) {
  return t.defined() ? ptr<const T>(t) : nullptr;
}
template <typename T>
T* opt_mut(const Tensor& t) {
  return t.defined() ? ptr<T>(t) : nullptr;
}

}  // namespace

void CudaBackend::softmax(const Tensor& x, const Tensor& y, bool log, bool causal) {
  const int64_t n = last_dim(x), seq_len = causal ? x.size(-2) : 1;
  dispatch_floating(x.dtype(), "softmax", [&](auto tag) {
    using T = decltype(tag);
    launch_rows(rows_of(x), "softmax", [&](unsigned rows) {
      softmax_kernel<T><<<rows, kRowThreads, 0, stream()>>>(ptr<const T>(x), ptr<T>(y), n, seq_len, log, causal);
    });
  });
}

void CudaBackend::softmax_backward(const Tensor& grad_y, const Tensor& y, const Tensor& grad_x, bool log) {
  const int64_t n = last_dim(y);
  dispatch_floating(y.dtype(), "softmax_backward", [&](auto tag) {
    using T = decltype(tag);
    launch_rows(rows_of(y), "softmax_backward", [&](unsigned rows) {
      softmax_backward_kernel<T><<<rows, kRowThreads, 0, stream()>>>(ptr<const T>(grad_y), ptr<const T>(y),
                                                                     ptr<T>(grad_x), n, log);
    });
  });
}

void CudaBackend::layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps, const Tensor& y,
                             const Tensor& mean, const Tensor& rstd) {
  const int64_t n = last_dim(x);
  dispatch_floating(x.dtype(), "layer_norm", [&](auto tag) {
    using T = decltype(tag);
    launch_rows(rows_of(x), "layer_norm", [&](unsigned rows) {
      norm_kernel<T><<<rows, kRowThreads, 0, stream()>>>(ptr<const T>(x), opt<T>(weight), opt<T>(bias), ptr<T>(y),
                                                          ptr<T>(mean), ptr<T>(rstd), n, eps, true);
    });
  });
}

void CudaBackend::rms_norm(const Tensor& x, const Tensor& weight, double eps, const Tensor& y, const Tensor& rstd) {
  const int64_t n = last_dim(x);
  dispatch_floating(x.dtype(), "rms_norm", [&](auto tag) {
    using T = decltype(tag);
    launch_rows(rows_of(x), "rms_norm", [&](unsigned rows) {
      norm_kernel<T><<<rows, kRowThreads, 0, stream()>>>(ptr<const T>(x), opt<T>(weight), nullptr, ptr<T>(y), nullptr,
                                                          ptr<T>(rstd), n, eps, false);
    });
  });
}

namespace {
template <typename T>
void norm_backward(const Tensor& grad_y, const Tensor& x, const Tensor& weight, const Tensor& mean, const Tensor& rstd,
                   const Tensor& grad_x, const Tensor& grad_weight, const Tensor& grad_bias) {
  const int64_t n = last_dim(x), rows = rows_of(x);
  if (grad_x.defined())
    launch_rows(rows, "norm_backward", [&](unsigned blocks) {
      norm_backward_kernel<T><<<blocks, kRowThreads, 0, stream()>>>(ptr<const T>(grad_y), ptr<const T>(x),
                                                                    opt<T>(weight), opt<T>(mean), ptr<const T>(rstd),
                                                                    ptr<T>(grad_x), n);
    });
  if ((grad_weight.defined() || grad_bias.defined()) && n > 0) {
    using Acc = RowAccumulator<T>;
    const int64_t column_tiles = (n + kTileColumns - 1) / kTileColumns;
    if (column_tiles > 65535)
      throw std::invalid_argument("norm_backward: " + std::to_string(n) +
                                  " columns exceed the CUDA grid's 65,535 column tiles of " +
                                  std::to_string(kTileColumns));
    // At least one tile, so that rows == 0 still writes zero gradients.
    const int64_t row_tiles = std::max<int64_t>(std::min((rows + kMinTileRows - 1) / kMinTileRows, kMaxRowTiles), 1);
    const int64_t tile_rows = (rows + row_tiles - 1) / row_tiles;
    const Tensor partials = workspace(2 * row_tiles * n * sizeof(Acc), x.device());
    Acc* partial_w = static_cast<Acc*>(partials.raw_data());
    Acc* partial_b = partial_w + row_tiles * n;
    affine_grad_partials_kernel<T>
        <<<dim3(static_cast<unsigned>(row_tiles), static_cast<unsigned>(column_tiles)), dim3(kTileColumns, kTileRowLanes),
           0, stream()>>>(ptr<const T>(grad_y), ptr<const T>(x), opt<T>(mean), ptr<const T>(rstd), rows, n, tile_rows,
                          partial_w, partial_b);
    ML_CUDA_LAUNCHED("norm_backward");
    affine_grad_totals_kernel<T><<<blocks_for(n), kThreads, 0, stream()>>>(partial_w, partial_b, row_tiles, n,
                                                                           opt_mut<T>(grad_weight),
                                                                           opt_mut<T>(grad_bias));
    ML_CUDA_LAUNCHED("norm_backward");
  }
}
}  // namespace

void CudaBackend::layer_norm_backward(const Tensor& grad_y, const Tensor& x, const Tensor& weight, const Tensor& mean,
                                      const Tensor& rstd, const Tensor& grad_x, const Tensor& grad_weight,
                                      const Tensor& grad_bias) {
  dispatch_floating(x.dtype(), "layer_norm_backward", [&](auto tag) {
    norm_backward<decltype(tag)>(grad_y, x, weight, mean, rstd, grad_x, grad_weight, grad_bias);
  });
}

void CudaBackend::rms_norm_backward(const Tensor& grad_y, const Tensor& x, const Tensor& weight, const Tensor& rstd,
                                    const Tensor& grad_x, const Tensor& grad_weight) {
  dispatch_floating(x.dtype(), "rms_norm_backward", [&](auto tag) {
    norm_backward<decltype(tag)>(grad_y, x, weight, Tensor(), rstd, grad_x, grad_weight, Tensor());
  });
}

void CudaBackend::normalize_rows(const Tensor& x, double scale, double eps, const Tensor& y) {
  const int64_t n = last_dim(x);
  dispatch_floating(x.dtype(), "normalize_rows", [&](auto tag) {
    using T = decltype(tag);
    launch_rows(rows_of(x), "normalize_rows", [&](unsigned rows) {
      normalize_rows_kernel<T><<<rows, kRowThreads, 0, stream()>>>(ptr<const T>(x), ptr<T>(y), n, scale, eps);
    });
  });
}

void CudaBackend::cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index,
                                double label_smoothing, const Tensor& losses, const Tensor& row_stats) {
  const int64_t n = last_dim(logits);
  dispatch_floating(logits.dtype(), "cross_entropy", [&](auto tag) {
    using T = decltype(tag);
    launch_rows(rows_of(logits), "cross_entropy", [&](unsigned rows) {
      cross_entropy_kernel<T><<<rows, kRowThreads, 0, stream()>>>(ptr<const T>(logits), ptr<const int64_t>(targets), n,
                                                                  ignore_index, label_smoothing, ptr<T>(losses),
                                                                  ptr<double>(row_stats), nullptr, nullptr,
                                                                  bad_index_slot());
    });
  });
}

void CudaBackend::cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& row_stats,
                                         int64_t ignore_index, double label_smoothing, const Tensor& grad_losses,
                                         const Tensor& grad_logits) {
  const int64_t n = last_dim(logits);
  dispatch_floating(logits.dtype(), "cross_entropy_backward", [&](auto tag) {
    using T = decltype(tag);
    launch_rows(rows_of(logits), "cross_entropy_backward", [&](unsigned rows) {
      cross_entropy_kernel<T><<<rows, kRowThreads, 0, stream()>>>(
          ptr<const T>(logits), ptr<const int64_t>(targets), n, ignore_index, label_smoothing, nullptr,
          ptr<double>(row_stats), ptr<const T>(grad_losses), ptr<T>(grad_logits), bad_index_slot());
    });
  });
}

}  // namespace ml
