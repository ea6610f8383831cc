// Indexing kernels. Tensors are contiguous; a tensor is seen as [outer, size(dim), inner].
// Scatter-style kernels (index_add, scatter_add) write each destination from one thread only,
// so repeated indices accumulate without races and in a fixed order.
#include <algorithm>
#include <stdexcept>
#include <string>

#include "framework/backends/cpu/cpu_backend.h"
#include "framework/backends/cpu/cpu_loops.h"
#include "framework/backends/index_layout.h"

namespace ml {
using namespace cpu_loops;

namespace {

void check_indices(const Tensor& index, int64_t bound, const char* kernel) {
  const int64_t* idx = index.data<int64_t>();
  for (int64_t i = 0; i < index.numel(); ++i)
    if (idx[i] < 0 || idx[i] >= bound)
      throw std::out_of_range(std::string(kernel) + ": index " + std::to_string(idx[i]) + " out of range [0, " +
                              std::to_string(bound) + ")");
}

}  // namespace

void CpuBackend::index_select(const Tensor& x, int64_t dim, const Tensor& index, const Tensor& out) {
  check_indices(index, x.size(dim), "index_select");
  const Split3 s = split_at(x.shape(), dim);
  const int64_t count = index.numel();
  const int64_t* idx = index.data<int64_t>();
  dispatch_all(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* src = static_cast<const T*>(x.raw_data());
    T* dst = static_cast<T*>(out.raw_data());
#pragma omp parallel for collapse(2) schedule(static) if (out.numel() >= kParallelGrain)
    for (int64_t o = 0; o < s.outer; ++o)
      for (int64_t j = 0; j < count; ++j) {
        const T* from = src + (o * s.mid + idx[j]) * s.inner;
        T* to = dst + (o * count + j) * s.inner;
        for (int64_t k = 0; k < s.inner; ++k) to[k] = from[k];
      }
  });
}

void CpuBackend::index_add(const Tensor& out, int64_t dim, const Tensor& index, const Tensor& src) {
  check_indices(index, out.size(dim), "index_add");
  const Split3 s = split_at(out.shape(), dim);
  const int64_t count = index.numel();
  const int64_t* idx = index.data<int64_t>();
  dispatch_floating(out.dtype(), "index_add", [&](auto tag) {
    using T = decltype(tag);
    const T* from = src.data<T>();
    T* dst = out.data<T>();
    // Threads split the outer positions and blocks of the inner ones; each destination is
    // written by one thread, which walks j in order. Within a block the adds run along
    // contiguous memory (a row of a matrix when dim is 0), not down a column.
    constexpr int64_t kBlock = 256;
    const int64_t blocks = (s.inner + kBlock - 1) / kBlock;
#pragma omp parallel for collapse(2) schedule(static) if (src.numel() >= kParallelGrain)
    for (int64_t o = 0; o < s.outer; ++o)
      for (int64_t b = 0; b < blocks; ++b) {
        const int64_t begin = b * kBlock, end = std::min(s.inner, begin + kBlock);
        for (int64_t j = 0; j < count; ++j) {
          T* to = dst + (o * s.mid + idx[j]) * s.inner;
          const T* add = from + (o * count + j) * s.inner;
          for (int64_t k = begin; k < end; ++k) to[k] += add[k];
        }
      }
  });
}

void CpuBackend::gather(const Tensor& x, int64_t dim, const Tensor& index, const Tensor& out) {
  check_indices(index, x.size(dim), "gather");
  const Shape& xs = x.strides();
  const int64_t* idx = index.data<int64_t>();
  dispatch_all(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* src = static_cast<const T*>(x.raw_data());
    T* dst = static_cast<T*>(out.raw_data());
    // index may be smaller than x in the non-gathered dims, so address x by its own strides.
    const Shape& is = index.shape();
    parallel_for(out.numel(), out.numel() >= kParallelGrain, [&](int64_t flat) {
      int64_t rem = flat, offset = 0;
      for (int64_t d = index.dim() - 1; d >= 0; --d) {
        const int64_t i = rem % is[d];
        rem /= is[d];
        offset += (d == dim ? idx[flat] : i) * xs[d];
      }
      dst[flat] = src[offset];
    });
  });
}

void CpuBackend::scatter_add(const Tensor& out, int64_t dim, const Tensor& index, const Tensor& src) {
  check_indices(index, out.size(dim), "scatter_add");
  const Shape& is = index.shape();
  const Shape& os = out.strides();
  const int64_t* idx = index.data<int64_t>();
  dispatch_floating(out.dtype(), "scatter_add", [&](auto tag) {
    using T = decltype(tag);
    const T* from = src.data<T>();
    T* dst = out.data<T>();
    for (int64_t flat = 0; flat < index.numel(); ++flat) {
      int64_t rem = flat, offset = 0;
      for (int64_t d = index.dim() - 1; d >= 0; --d) {
        const int64_t i = rem % is[d];
        rem /= is[d];
        offset += (d == dim ? idx[flat] : i) * os[d];
      }
      dst[offset] += from[flat];
    }
  });
}

}  // namespace ml
