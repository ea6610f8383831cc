// Row reductions and top-k along rows. A row of up to kChunk elements is one block's work. A
// longer row (a full reduction is one row of every element) would leave all but one block idle,
// so it runs in two passes: one block per chunk of kChunk elements writes a partial result, then
// one block per row combines its chunks' partials. The split depends only on the row length and
// every block combines in a fixed order, so results are the same on every run. Sums accumulate
// in double: they are bound by memory traffic, so the double adds cost next to nothing, and
// float32 sums of millions of elements stay as close to the CPU's double sums as one rounding.
// Top-k along rows counts ranks instead.
#include <cuda/std/limits>

#include "framework/backends/cuda/cuda_backend_impl.cuh"
#include "framework/backends/cuda/cuda_common.cuh"
#include "framework/backends/ranking.h"

namespace ml {
using namespace cuda_detail;

namespace {

constexpr int64_t kChunk = 4096;  // elements per block: 16 per thread
constexpr int kWarps = kThreads / 32;

// Block b sums chunk b % chunks (of `chunk` elements) of row b / chunks of x (rows of n
// elements), squared in In when `squares`, and writes out[b]. One pass with chunk = n and chunks
// = 1 sums whole rows.
template <typename In, typename Out>
__global__ void sum_chunks_kernel(const In* x, Out* out, int64_t n, int64_t chunk, int64_t chunks, bool squares) {
  __shared__ double scratch[kWarps];
  const In* row = x + blockIdx.x / chunks * n;
  const int64_t begin = blockIdx.x % chunks * chunk, end = min(n, begin + chunk);
  double acc = 0.0;
  for (int64_t j = begin + threadIdx.x; j < end; j += blockDim.x)
    acc += static_cast<double>(squares ? row[j] * row[j] : row[j]);
  acc = block_sum(acc, scratch);
  if (threadIdx.x == 0) out[blockIdx.x] = static_cast<Out>(acc);
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

// Block b finds the extreme of chunk b % chunks of row b / chunks, like sum_chunks_kernel, and
// its position in the row: j itself, or positions[j] when x holds a first pass's partials (whose
// positions are in the whole row, so ties still go to the first extreme of the row).
template <typename T>
__global__ void extreme_chunks_kernel(const T* x, const int64_t* positions, T* out, int64_t* out_positions, int64_t n,
                                      int64_t chunk, int64_t chunks, bool is_max) {
  __shared__ T best_v[kThreads];
  __shared__ int64_t best_i[kThreads];
  const int64_t row_start = blockIdx.x / chunks * n;
  const int64_t begin = blockIdx.x % chunks * chunk, end = min(n, begin + chunk);
  T best = is_max ? -cuda::std::numeric_limits<T>::infinity() : cuda::std::numeric_limits<T>::infinity();
  int64_t best_j = cuda::std::numeric_limits<int64_t>::max();  // after every real position
  for (int64_t j = begin + threadIdx.x; j < end; j += blockDim.x) {
    const int64_t position = positions ? positions[row_start + j] : j;
    if (better(x[row_start + j], position, best, best_j, is_max)) best = x[row_start + j], best_j = position;
  }
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
    if (out_positions) out_positions[blockIdx.x] = best_i[0];
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
  const int64_t chunks = n > kChunk ? (n + kChunk - 1) / kChunk : 1;
  int64_t* opt_indices = indices.defined() ? ptr<int64_t>(indices) : nullptr;
  const bool is_sum = op == ReduceOp::Sum || op == ReduceOp::SumOfSquares;
  const bool squares = op == ReduceOp::SumOfSquares, is_max = op == ReduceOp::Max;
  dispatch_floating(x.dtype(), "reduce_rows", [&](auto tag) {
    using T = decltype(tag);
    if (chunks == 1) {
      launch_rows(rows, "reduce_rows", [&](unsigned blocks) {
        if (is_sum)
          sum_chunks_kernel<T, T><<<blocks, kThreads, 0, stream()>>>(ptr<const T>(x), ptr<T>(out), n, n, 1, squares);
        else
          extreme_chunks_kernel<T><<<blocks, kThreads, 0, stream()>>>(ptr<const T>(x), nullptr, ptr<T>(out),
                                                                      opt_indices, n, n, 1, is_max);
      });
      return;
    }
    // Two passes: the chunks' partials (device scratch, stream-ordered), then one block per row.
    if (is_sum) {
      const Tensor partials = Tensor::empty({rows * chunks}, DType::Float64, x.device());
      launch_rows(rows * chunks, "reduce_rows", [&](unsigned blocks) {
        sum_chunks_kernel<T, double><<<blocks, kThreads, 0, stream()>>>(ptr<const T>(x), ptr<double>(partials), n,
                                                                        kChunk, chunks, squares);
      });
      launch_rows(rows, "reduce_rows", [&](unsigned blocks) {
        sum_chunks_kernel<double, T><<<blocks, kThreads, 0, stream()>>>(ptr<const double>(partials), ptr<T>(out),
                                                                        chunks, chunks, 1, false);
      });
      return;
    }
    const Tensor partials = Tensor::empty({rows * chunks}, x.dtype(), x.device());
    const Tensor positions = Tensor::empty({rows * chunks}, DType::Int64, x.device());
    launch_rows(rows * chunks, "reduce_rows", [&](unsigned blocks) {
      extreme_chunks_kernel<T><<<blocks, kThreads, 0, stream()>>>(ptr<const T>(x), nullptr, ptr<T>(partials),
                                                                  ptr<int64_t>(positions), n, kChunk, chunks, is_max);
    });
    launch_rows(rows, "reduce_rows", [&](unsigned blocks) {
      extreme_chunks_kernel<T><<<blocks, kThreads, 0, stream()>>>(ptr<const T>(partials), ptr<const int64_t>(positions),
                                                                  ptr<T>(out), opt_indices, chunks, chunks, 1, is_max);
    });
  });
}

}  // namespace ml
