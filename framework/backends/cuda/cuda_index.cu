// Indexing kernels. Scatter-style kernels accumulate with atomicAdd, so repeated indices are
// summed correctly (in a nondeterministic order, unlike the CPU backend). Indices are checked on
// the device (index_in_range), so no kernel here waits for the host.
#include "framework/backends/cuda/cuda_backend_impl.cuh"
#include "framework/backends/cuda/cuda_common.cuh"
#include "framework/backends/index_layout.h"

namespace ml {
using namespace cuda_detail;

namespace {

template <typename T>
__global__ void index_select_kernel(const T* x, const int64_t* idx, T* out, int64_t count, Split3 s, int64_t n,
                                    BadIndexSlot bad) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t k = i % s.inner, j = (i / s.inner) % count, o = i / (s.inner * count);
    out[i] = index_in_range(idx[j], s.mid, IndexUse::IndexSelect, bad) ? x[(o * s.mid + idx[j]) * s.inner + k] : T(0);
  }
}

template <typename T>
__global__ void index_add_kernel(T* out, const int64_t* idx, const T* src, int64_t count, Split3 s, int64_t n,
                                 BadIndexSlot bad) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t k = i % s.inner, j = (i / s.inner) % count, o = i / (s.inner * count);
    if (index_in_range(idx[j], s.mid, IndexUse::IndexAdd, bad)) atomicAdd(out + (o * s.mid + idx[j]) * s.inner + k, src[i]);
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

// `bound` is the target's size along the indexed dim.
template <typename T>
__global__ void gather_kernel(const T* x, const int64_t* idx, T* out, IndexWalk w, int64_t bound, int64_t n,
                              BadIndexSlot bad) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = index_in_range(idx[i], bound, IndexUse::Gather, bad) ? x[w.offset(i, idx[i])] : T(0);
}

template <typename T>
__global__ void scatter_add_kernel(T* out, const int64_t* idx, const T* src, IndexWalk w, int64_t bound, int64_t n,
                                   BadIndexSlot bad) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    if (index_in_range(idx[i], bound, IndexUse::ScatterAdd, bad)) atomicAdd(out + w.offset(i, idx[i]), src[i]);
}

}  // namespace

void CudaBackend::index_select(const Tensor& x, int64_t dim, const Tensor& index, const Tensor& out) {
  const Split3 s = split_at(x.shape(), dim);
  dispatch_all(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    index_select_kernel<T><<<blocks_for(out.numel()), kThreads, 0, stream()>>>(
        ptr<const T>(x), ptr<const int64_t>(index), ptr<T>(out), index.numel(), s, out.numel(), bad_index_slot());
    ML_CUDA_LAUNCHED("index_select");
  });
}

void CudaBackend::index_add(const Tensor& out, int64_t dim, const Tensor& index, const Tensor& src) {
  const Split3 s = split_at(out.shape(), dim);
  dispatch_floating(out.dtype(), "index_add", [&](auto tag) {
    using T = decltype(tag);
    index_add_kernel<T><<<blocks_for(src.numel()), kThreads, 0, stream()>>>(
        ptr<T>(out), ptr<const int64_t>(index), ptr<const T>(src), index.numel(), s, src.numel(), bad_index_slot());
    ML_CUDA_LAUNCHED("index_add");
  });
}

void CudaBackend::gather(const Tensor& x, int64_t dim, const Tensor& index, const Tensor& out) {
  dispatch_all(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    gather_kernel<T><<<blocks_for(out.numel()), kThreads, 0, stream()>>>(
        ptr<const T>(x), ptr<const int64_t>(index), ptr<T>(out), walk_of(index, x, dim), x.size(dim), out.numel(),
        bad_index_slot());
    ML_CUDA_LAUNCHED("gather");
  });
}

void CudaBackend::scatter_add(const Tensor& out, int64_t dim, const Tensor& index, const Tensor& src) {
  dispatch_floating(out.dtype(), "scatter_add", [&](auto tag) {
    using T = decltype(tag);
    scatter_add_kernel<T><<<blocks_for(index.numel()), kThreads, 0, stream()>>>(
        ptr<T>(out), ptr<const int64_t>(index), ptr<const T>(src), walk_of(index, out, dim), out.size(dim),
        index.numel(), bad_index_slot());
    ML_CUDA_LAUNCHED("scatter_add");
  });
}

}  // namespace ml
