// Indexing kernels. Scatter-style kernels accumulate with atomicAdd, so repeated indices are
// summed correctly (in a nondeterministic order, unlike the CPU backend).
#include "framework/backends/cuda/cuda_backend_impl.cuh"
#include "framework/backends/cuda/cuda_common.cuh"

namespace ml {
using namespace cuda_detail;

namespace {

void check_indices(const Tensor& index, int64_t bound, const char* kernel) {
  int64_t bad = 0;
  if (find_out_of_range(index, bound, kNoIgnore, &bad))
    throw std::out_of_range(std::string(kernel) + ": index " + std::to_string(bad) + " out of range [0, " +
                            std::to_string(bound) + ")");
}

struct Split3 {
  int64_t outer = 1, mid = 1, inner = 1;
};
Split3 split_at(const Shape& shape, int64_t dim) {
  Split3 s;
  for (int64_t d = 0; d < static_cast<int64_t>(shape.size()); ++d) (d < dim ? s.outer : d == dim ? s.mid : s.inner) *= shape[d];
  return s;
}

template <typename T>
__global__ void index_select_kernel(const T* x, const int64_t* idx, T* out, int64_t count, Split3 s, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t k = i % s.inner, j = (i / s.inner) % count, o = i / (s.inner * count);
    out[i] = x[(o * s.mid + idx[j]) * s.inner + k];
  }
}

template <typename T>
__global__ void index_add_kernel(T* out, const int64_t* idx, const T* src, int64_t count, Split3 s, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t k = i % s.inner, j = (i / s.inner) % count, o = i / (s.inner * count);
    atomicAdd(out + (o * s.mid + idx[j]) * s.inner + k, src[i]);
  }
}

// The element offset in `strided` (by its strides) of index element `flat`, with the gathered dim
// replaced by the index value.
struct IndexWalk {
  int ndim;
  int dim;
  int64_t index_sizes[kMaxDims];
  int64_t target_strides[kMaxDims];
  __device__ int64_t offset(int64_t flat, int64_t index_value) const {
    int64_t off = 0;
    for (int d = ndim - 1; d >= 0; --d) {
      const int64_t i = flat % index_sizes[d];
      flat /= index_sizes[d];
      off += (d == dim ? index_value : i) * target_strides[d];
    }
    return off;
  }
};

IndexWalk walk_of(const Tensor& index, const Tensor& target, int64_t dim) {
  IndexWalk w{};
  w.ndim = static_cast<int>(index.dim());
  w.dim = static_cast<int>(dim);
  for (int d = 0; d < w.ndim; ++d) {
    w.index_sizes[d] = index.shape()[d];
    w.target_strides[d] = target.strides()[d];
  }
  return w;
}

template <typename T>
__global__ void gather_kernel(const T* x, const int64_t* idx, T* out, IndexWalk w, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = x[w.offset(i, idx[i])];
}

template <typename T>
__global__ void scatter_add_kernel(T* out, const int64_t* idx, const T* src, IndexWalk w, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    atomicAdd(out + w.offset(i, idx[i]), src[i]);
}

}  // namespace

void CudaBackend::index_select(const Tensor& x, int64_t dim, const Tensor& index, const Tensor& out) {
  check_indices(index, x.size(dim), "index_select");
  const Split3 s = split_at(x.shape(), dim);
  dispatch_all(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    index_select_kernel<T><<<blocks_for(out.numel()), kThreads, 0, stream()>>>(
        ptr<const T>(x), ptr<const int64_t>(index), ptr<T>(out), index.numel(), s, out.numel());
    ML_CUDA_LAUNCHED("index_select");
  });
}

void CudaBackend::index_add(const Tensor& out, int64_t dim, const Tensor& index, const Tensor& src) {
  check_indices(index, out.size(dim), "index_add");
  const Split3 s = split_at(out.shape(), dim);
  dispatch_floating(out.dtype(), "index_add", [&](auto tag) {
    using T = decltype(tag);
    index_add_kernel<T><<<blocks_for(src.numel()), kThreads, 0, stream()>>>(
        ptr<T>(out), ptr<const int64_t>(index), ptr<const T>(src), index.numel(), s, src.numel());
    ML_CUDA_LAUNCHED("index_add");
  });
}

void CudaBackend::gather(const Tensor& x, int64_t dim, const Tensor& index, const Tensor& out) {
  check_indices(index, x.size(dim), "gather");
  dispatch_all(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    gather_kernel<T><<<blocks_for(out.numel()), kThreads, 0, stream()>>>(
        ptr<const T>(x), ptr<const int64_t>(index), ptr<T>(out), walk_of(index, x, dim), out.numel());
    ML_CUDA_LAUNCHED("gather");
  });
}

void CudaBackend::scatter_add(const Tensor& out, int64_t dim, const Tensor& index, const Tensor& src) {
  check_indices(index, out.size(dim), "scatter_add");
  dispatch_floating(out.dtype(), "scatter_add", [&](auto tag) {
    using T = decltype(tag);
    scatter_add_kernel<T><<<blocks_for(index.numel()), kThreads, 0, stream()>>>(
        ptr<T>(out), ptr<const int64_t>(index), ptr<const T>(src), walk_of(index, out, dim), index.numel());
    ML_CUDA_LAUNCHED("scatter_add");
  });
}

}  // namespace ml
