// Row reductions: one block per row, a shared-memory tree inside the block. Sums accumulate in
// double so float32 results match the CPU backend closely.
#include <cuda/std/limits>

#include "framework/backends/cuda/cuda_backend_impl.cuh"
#include "framework/backends/cuda/cuda_common.cuh"

namespace ml {
using namespace cuda_detail;

namespace {

template <typename T>
__global__ void sum_rows_kernel(const T* x, T* out, int64_t n) {
  __shared__ double partial[kThreads];
  const T* row = x + blockIdx.x * n;
  double acc = 0.0;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) acc += static_cast<double>(row[j]);
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

}  // namespace

void CudaBackend::reduce_rows(ReduceOp op, const Tensor& x, const Tensor& out, const Tensor& indices) {
  const int64_t rows = out.numel();
  if (rows == 0) return;
  const int64_t n = x.numel() / rows;
  dispatch_floating(x.dtype(), "reduce_rows", [&](auto tag) {
    using T = decltype(tag);
    // Rows beyond the grid limit are handled by launching in slices.
    for (int64_t first = 0; first < rows; first += 65535) {
      const unsigned count = static_cast<unsigned>(std::min<int64_t>(65535, rows - first));
      if (op == ReduceOp::Sum)
        sum_rows_kernel<T><<<count, kThreads, 0, stream()>>>(ptr<const T>(x) + first * n, ptr<T>(out) + first, n);
      else
        extreme_rows_kernel<T><<<count, kThreads, 0, stream()>>>(
            ptr<const T>(x) + first * n, ptr<T>(out) + first,
            indices.defined() ? ptr<int64_t>(indices) + first : nullptr, n, op == ReduceOp::Max);
      ML_CUDA_LAUNCHED("reduce_rows");
    }
  });
}

}  // namespace ml
