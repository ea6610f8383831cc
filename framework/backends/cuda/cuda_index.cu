// Indexing kernels. Scatter-style kernels write each contribution's target element and leave the
// adding to add_at (below): in a fixed order by default, with atomics otherwise. Indices are
// checked on the device (index_in_range), so no kernel here waits for the host.
#include <cub/device/device_radix_sort.cuh>

#include "framework/backends/cuda/cuda_backend.h"
#include "framework/backends/cuda/cuda_backend_impl.cuh"
#include "framework/backends/cuda/cuda_common.cuh"
#include "framework/backends/index_layout.h"

namespace ml {
using namespace cuda_detail;

// ------------------------------------------------------------------------------- add_at
namespace {

template <typename T>
__global__ void atomic_add_at_kernel(T* out, int64_t out_size, const int64_t* targets, const T* src, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    if (targets[i] < out_size) atomicAdd(out + targets[i], src[i]);
}

__global__ void iota_kernel(int64_t* order, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    order[i] = i;
}

// After a stable sort by target, the contributions to one target form a run in increasing source
// position. The first thread of each run adds the run to its target in that order, as the CPU
// does: no two threads write one element, so no atomics and the same bits on every run.
template <typename T>
__global__ void add_sorted_runs_kernel(T* out, uint64_t out_size, const uint64_t* targets, const int64_t* order,
                                       const T* src, int64_t n) {
  for (int64_t p = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; p < n; p += int64_t(gridDim.x) * blockDim.x) {
    const uint64_t target = targets[p];
    if (target >= out_size || (p > 0 && targets[p - 1] == target)) continue;
    T acc = out[target];
    for (int64_t q = p; q < n && targets[q] == target; ++q) acc += src[order[q]];
    out[target] = acc;
  }
}

}  // namespace

namespace cuda_detail {

template <typename T>
void add_at(T* out, int64_t out_size, const Tensor& targets, const T* src, const char* where) {
  const int64_t n = targets.numel();
  if (n == 0 || out_size == 0) return;
  if (!cuda_deterministic()) {
    atomic_add_at_kernel<T><<<blocks_for(n), kThreads, 0, stream()>>>(out, out_size, ptr<const int64_t>(targets), src, n);
    ML_CUDA_LAUNCHED(where);
    return;
  }
  const Tensor order = Tensor::empty({n}, DType::Int64, targets.device());
  const Tensor sorted_targets = Tensor::empty({n}, DType::Int64, targets.device());
  const Tensor sorted_order = Tensor::empty({n}, DType::Int64, targets.device());
  iota_kernel<<<blocks_for(n), kThreads, 0, stream()>>>(ptr<int64_t>(order), n);
  ML_CUDA_LAUNCHED(where);
  // Targets are in [0, out_size] (out_size: skipped), so only their low bits need sorting. Radix
  // sort is stable: equal targets keep increasing source positions.
  int end_bit = 0;
  while (end_bit < 64 && (uint64_t(out_size) >> end_bit) != 0) ++end_bit;
  const auto* keys_in = reinterpret_cast<const uint64_t*>(ptr<const int64_t>(targets));
  auto* keys_out = reinterpret_cast<uint64_t*>(ptr<int64_t>(sorted_targets));
  size_t bytes = 0;
  ML_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, bytes, keys_in, keys_out, ptr<const int64_t>(order),
                                                ptr<int64_t>(sorted_order), n, 0, end_bit, stream()),
                where);
  const Tensor scratch = workspace(bytes, targets.device());
  ML_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(scratch.raw_data(), bytes, keys_in, keys_out, ptr<const int64_t>(order),
                                                ptr<int64_t>(sorted_order), n, 0, end_bit, stream()),
                where);
  add_sorted_runs_kernel<T><<<blocks_for(n), kThreads, 0, stream()>>>(out, uint64_t(out_size), keys_out,
                                                                       ptr<const int64_t>(sorted_order), src, n);
  ML_CUDA_LAUNCHED(where);
}
template void add_at<float>(float*, int64_t, const Tensor&, const float*, const char*);
template void add_at<double>(double*, int64_t, const Tensor&, const double*, const char*);

}  // namespace cuda_detail

// ------------------------------------------------------------------------------- indexing
namespace {

template <typename T>
__global__ void index_select_kernel(const T* x, const int64_t* idx, T* out, int64_t count, Split3 s, int64_t n,
                                    BadIndexSlot bad) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t k = i % s.inner, j = (i / s.inner) % count, o = i / (s.inner * count);
    out[i] = index_in_range(idx[j], s.mid, IndexUse::IndexSelect, bad) ? x[(o * s.mid + idx[j]) * s.inner + k] : T(0);
  }
}

// The element of out (contiguous [outer, mid, inner]) that src element i adds to; `skip` for a bad index.
__global__ void index_add_targets_kernel(const int64_t* idx, int64_t count, Split3 s, int64_t n, int64_t skip,
                                         int64_t* targets, BadIndexSlot bad) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t k = i % s.inner, j = (i / s.inner) % count, o = i / (s.inner * count);
    targets[i] = index_in_range(idx[j], s.mid, IndexUse::IndexAdd, bad) ? (o * s.mid + idx[j]) * s.inner + k : skip;
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

// The element of out (by its strides) that src element i adds to; `skip` for a bad index.
__global__ void scatter_add_targets_kernel(const int64_t* idx, IndexWalk w, int64_t bound, int64_t n, int64_t skip,
                                           int64_t* targets, BadIndexSlot bad) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    targets[i] = index_in_range(idx[i], bound, IndexUse::ScatterAdd, bad) ? w.offset(i, idx[i]) : skip;
}

// One past the last element a strided tensor reaches (its strides are never negative).
int64_t span_of(const Tensor& t) {
  if (t.numel() == 0) return 0;
  int64_t last = 0;
  for (int64_t d = 0; d < t.dim(); ++d) last += (t.size(d) - 1) * t.strides()[d];
  return last + 1;
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
  const Tensor targets = Tensor::empty({src.numel()}, DType::Int64, out.device());
  if (src.numel() > 0) {
    index_add_targets_kernel<<<blocks_for(src.numel()), kThreads, 0, stream()>>>(
        ptr<const int64_t>(index), index.numel(), s, src.numel(), out.numel(), ptr<int64_t>(targets), bad_index_slot());
    ML_CUDA_LAUNCHED("index_add");
  }
  dispatch_floating(out.dtype(), "index_add", [&](auto tag) {
    using T = decltype(tag);
    add_at<T>(ptr<T>(out), out.numel(), targets, ptr<const T>(src), "index_add");
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
  const int64_t span = span_of(out);
  const Tensor targets = Tensor::empty({index.numel()}, DType::Int64, out.device());
  if (index.numel() > 0) {
    scatter_add_targets_kernel<<<blocks_for(index.numel()), kThreads, 0, stream()>>>(
        ptr<const int64_t>(index), walk_of(index, out, dim), out.size(dim), index.numel(), span, ptr<int64_t>(targets),
        bad_index_slot());
    ML_CUDA_LAUNCHED("scatter_add");
  }
  dispatch_floating(out.dtype(), "scatter_add", [&](auto tag) {
    using T = decltype(tag);
    add_at<T>(ptr<T>(out), span, targets, ptr<const T>(src), "scatter_add");
  });
}

}  // namespace ml
