// Row reductions and top-k along rows. Each row is handled sequentially by one thread, so results
// do not depend on the thread count; float32 sums accumulate in double.
#include <algorithm>
#include <limits>
#include <numeric>
#include <vector>

#include "framework/backends/cpu/cpu_backend.h"
#include "framework/backends/cpu/cpu_loops.h"
#include "framework/backends/ranking.h"

namespace ml {
using namespace cpu_loops;

void CpuBackend::reduce_rows(ReduceOp op, const Tensor& x, const Tensor& out, const Tensor& indices) {
  dispatch_floating(x.dtype(), "reduce_rows", [&](auto tag) {
    using T = decltype(tag);
    const int64_t rows = out.numel();
    const int64_t n = rows == 0 ? 0 : x.numel() / rows;
    const T* src = x.data<T>();
    T* dst = out.data<T>();
    int64_t* idx = indices.defined() ? indices.data<int64_t>() : nullptr;
    parallel_for(rows, rows * n >= kParallelGrain && rows > 1, [&](int64_t r) {
      const T* row = src + r * n;
      if (op == ReduceOp::Sum || op == ReduceOp::SumOfSquares) {
        double acc = 0.0;
        if (op == ReduceOp::Sum) {
#pragma omp simd reduction(+ : acc)
          for (int64_t j = 0; j < n; ++j) acc += static_cast<double>(row[j]);
        } else {
#pragma omp simd reduction(+ : acc)
          for (int64_t j = 0; j < n; ++j) acc += static_cast<double>(row[j] * row[j]);
        }
        dst[r] = static_cast<T>(acc);
        return;
      }
      // Max/Min: the first extreme wins ties, as in PyTorch; NaN propagates.
      const bool is_max = op == ReduceOp::Max;
      T best = n > 0 ? row[0] : (is_max ? -std::numeric_limits<T>::infinity() : std::numeric_limits<T>::infinity());
      int64_t best_j = 0;
      for (int64_t j = 1; j < n && best == best; ++j) {
        const T v = row[j];
        if (v != v || (is_max ? v > best : v < best)) best = v, best_j = j;
      }
      dst[r] = best;
      if (idx) idx[r] = best_j;
    });
  });
}

// Each row: a partial sort of the positions by ranks_before (a strict total order, so the
// result is the one the CUDA rank count gives), O(n log k).
void CpuBackend::topk(const Tensor& x, int64_t k, TopkOrder order, const Tensor& values, const Tensor& indices) {
  dispatch_floating(x.dtype(), "topk", [&](auto tag) {
    using T = decltype(tag);
    const int64_t rows = values.numel() / k;
    const int64_t n = x.numel() / rows;
    const T* src = x.data<T>();
    T* out_values = values.data<T>();
    int64_t* out_indices = indices.data<int64_t>();
    parallel_for(rows, rows * n >= kParallelGrain && rows > 1, [&](int64_t r) {
      const T* row = src + r * n;
      std::vector<int64_t> positions(static_cast<size_t>(n));
      std::iota(positions.begin(), positions.end(), int64_t{0});
      std::partial_sort(positions.begin(), positions.begin() + k, positions.end(),
                        [row](int64_t a, int64_t b) { return ranks_before(row[a], a, row[b], b); });
      if (order == TopkOrder::ByIndex) std::sort(positions.begin(), positions.begin() + k);
      for (int64_t j = 0; j < k; ++j) {
        out_indices[r * k + j] = positions[static_cast<size_t>(j)];
        out_values[r * k + j] = row[positions[static_cast<size_t>(j)]];
      }
    });
  });
}

}  // namespace ml
