// Row reductions: one block per row, a shared-memory tree inside the block. Sums accumulate in
// double so float32 results match the CPU backend closely. Top-k along rows counts ranks instead.
#include <cuda/std/limits>

#include "framework/backends/cuda/cuda_backend_impl.cuh"
#include "framework/backends/cuda/cuda_common.cuh"
#include "framework/backends/ranking.h"

namespace ml {
using namespace cuda_detail;

namespace {

// Squares: sums row[j] * row[j], squared in T (ReduceOp::SumOfSquares).
template <typename T, bool Squares>
__global__ void sum_rows_kernel(const T* x, T* out, int64_t n) {
  __shared__ double partial[kThreads];
  const T* row = x + blockIdx.x * n;
  double acc = 0.0;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) acc += static_cast<double>(Squares ? row[j] * row[j] : row[j]);
  partial[threadIdx.x] = acc;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) partial[threadIdx.x] += partial[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[blockIdx.x] = static_cast<T>(partial[0]);
}

// Whether (v, j) beats (best, best_j): NaN wins, then the extreme value, then the lower index
// (the first extreme wins ties, as on the CPU).
template <typename T>
__device__ bool better(T v, int64_t j, T best, int64_t best_j, bool is_max) {
  if (best != best) return v != v && j < best_j;
  if (v != v) return true;
  if (v == best) return j < best_j;
  return is_max ? v > best : v < best;
}

template <typename T>
__global__ void extreme_rows_kernel(const T* x, T* out, int64_t* indices, int64_t n, bool is_max) {
  __shared__ T best_v[kThreads];
  __shared__ int64_t best_i[kThreads];
  const T* row = x + blockIdx.x * n;
  T best = is_max ? -cuda::std::numeric_limits<T>::infinity() : cuda::std::numeric_limits<T>::infinity();
  int64_t best_j = n;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x)
    if (better(row[j], j, best, best_j, is_max)) best = row[j], best_j = j;
  best_v[threadIdx.x] = best;
  best_i[threadIdx.x] = best_j;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s && better(best_v[threadIdx.x + s], best_i[threadIdx.x + s], best_v[threadIdx.x],
                                  best_i[threadIdx.x], is_max)) {
      best_v[threadIdx.x] = best_v[threadIdx.x + s];
      best_i[threadIdx.x] = best_i[threadIdx.x + s];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    out[blockIdx.x] = best_v[0];
    if (indices) indices[blockIdx.x] = best_i[0] == n ? 0 : best_i[0];
  }
}

// Top-k by counting, no sort: rank_i = #{j : x_j ranks before x_i} within the row, and element i
// is selected iff rank_i < k. One thread per element reads its whole row, so a row of n costs n^2
// comparisons: fine for the rows top-k ranks here (Dion2's slice scores: one row of min(rows,
// cols) <= ~8192 entries, <= 6.7e7 comparisons over 8192 threads), not meant for long rows; two
// plain kernels, nothing that waits for the host. ranks_before is a strict total order, so each
// row's ranks are a permutation of 0..n-1 and every output slot is written by exactly one thread.
template <typename T>
__global__ void topk_rank_kernel(const T* x, int64_t rows, int64_t n, int64_t* ranks) {
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < rows * n; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = e % n;
    const T* row = x + (e - i);
    const T value = row[i];
    int64_t rank = 0;
    for (int64_t j = 0; j < n; ++j) rank += ranks_before(row[j], j, value, i) ? 1 : 0;
    ranks[e] = rank;
  }
}

// Writes each selected element to its slot: its rank (ByValue), or the number of selected
// elements before it in the row (ByIndex, again O(n) per element).
template <typename T>
__global__ void topk_write_kernel(const T* x, const int64_t* ranks, int64_t rows, int64_t n, int64_t k, bool by_index,
                                  T* values, int64_t* indices) {
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < rows * n; e += int64_t(gridDim.x) * blockDim.x) {
    if (ranks[e] >= k) continue;
    const int64_t i = e % n, row_start = e - i;
    int64_t slot = ranks[e];
    if (by_index) {
      slot = 0;
      for (int64_t j = 0; j < i; ++j) slot += ranks[row_start + j] < k ? 1 : 0;
    }
    const int64_t out = (row_start / n) * k + slot;
    values[out] = x[e];
    indices[out] = i;
  }
}

}  // namespace

void CudaBackend::topk(const Tensor& x, int64_t k, TopkOrder order, const Tensor& values, const Tensor& indices) {
  const int64_t rows = values.numel() / k, n = x.numel() / rows;
  // Device scratch, freed back to the caching allocator: stream order makes it safe to reuse.
  const Tensor ranks = Tensor::empty({rows, n}, DType::Int64, x.device());
  dispatch_floating(x.dtype(), "topk", [&](auto tag) {
    using T = decltype(tag);
    topk_rank_kernel<T><<<blocks_for(rows * n), kThreads, 0, stream()>>>(ptr<const T>(x), rows, n, ptr<int64_t>(ranks));
    ML_CUDA_LAUNCHED("topk");
    topk_write_kernel<T><<<blocks_for(rows * n), kThreads, 0, stream()>>>(
        ptr<const T>(x), ptr<const int64_t>(ranks), rows, n, k, order == TopkOrder::ByIndex, ptr<T>(values),
        ptr<int64_t>(indices));
    ML_CUDA_LAUNCHED("topk");
  });
}

void CudaBackend::reduce_rows(ReduceOp op, const Tensor& x, const Tensor& out, const Tensor& indices) {
  const int64_t rows = out.numel();
  if (rows == 0) return;
  const int64_t n = x.numel() / rows;
  int64_t* opt_indices = indices.defined() ? ptr<int64_t>(indices) : nullptr;
  dispatch_floating(x.dtype(), "reduce_rows", [&](auto tag) {
    using T = decltype(tag);
    launch_rows(rows, "reduce_rows", [&](unsigned blocks) {
      if (op == ReduceOp::Sum)
        sum_rows_kernel<T, false><<<blocks, kThreads, 0, stream()>>>(ptr<const T>(x), ptr<T>(out), n);
      else if (op == ReduceOp::SumOfSquares)
        sum_rows_kernel<T, true><<<blocks, kThreads, 0, stream()>>>(ptr<const T>(x), ptr<T>(out), n);
      else
        extreme_rows_kernel<T><<<blocks, kThreads, 0, stream()>>>(ptr<const T>(x), ptr<T>(out), opt_indices, n,
                                                                  op == ReduceOp::Max);
    });
  });
}

}  // namespace ml
