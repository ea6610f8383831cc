// Elementwise CPU kernels; the per-element math lives in backends/elementwise_math.h, shared with CUDA.
#include "framework/backends/cpu/cpu_backend.h"
#include "framework/backends/elementwise_math.h"
#include "framework/backends/cpu/cpu_loops.h"
#include "framework/random.h"

#include <type_traits>

namespace ml {
using namespace cpu_loops;
using namespace elementwise;


void CpuBackend::fill(const Tensor& out, double value) {
  dispatch_all(out.dtype(), [&](auto tag) {
    using T = decltype(tag);
    map_elements<T>(out, [v = static_cast<T>(value)]() { return v; });
  });
}

// A copy between dtypes converts one element at a time: the readable loop. A copy within one dtype
// (contiguous() of a transposed view, a bias broadcast into a product's output, copy_peak) goes
// through map_elements: vectorized rows where both sides step by 1 (or the source by 0), and
// threads over rows or ranges, where the element loop ran on one thread at a scalar load per
// element (at 2 threads copy_peak measured half the bandwidth of a threaded multiply).
void CpuBackend::copy(const Tensor& src, const Tensor& dst) {
  if (src.dtype() == dst.dtype()) {
    dispatch_all(src.dtype(), [&](auto tag) {
      using T = decltype(tag);
      map_elements<T>(dst, [](T v) { return v; }, src);
    });
    return;
  }
  dispatch_all(src.dtype(), [&](auto src_tag) {
    using S = decltype(src_tag);
    dispatch_all(dst.dtype(), [&](auto dst_tag) {
      using D = decltype(dst_tag);
      const S* s = static_cast<const S*>(src.raw_data());
      D* d = static_cast<D*>(dst.raw_data());
      for_each_offset<2>(dst.shape(), {&dst.strides(), &src.strides()},
                         [&](const auto& off) { d[off[0]] = static_cast<D>(s[off[1]]); });
    });
  });
}

void CpuBackend::unary(UnaryOp op, const Tensor& x, const Tensor& out, UnaryParams p) {
  dispatch_floating(x.dtype(), "unary", [&](auto tag) {
    using T = decltype(tag);
    const T a = static_cast<T>(p.alpha), b = static_cast<T>(p.beta);
    with_constant_op(op, [&](auto fixed_op) {
      map_elements<T>(out, [=](T v) { return unary_forward(UnaryOp(fixed_op), v, a, b); }, x);
    });
  });
}

void CpuBackend::unary_backward(UnaryOp op, const Tensor& grad_out, const Tensor& x, const Tensor& y,
                                const Tensor& grad_in, UnaryParams p) {
  dispatch_floating(x.dtype(), "unary_backward", [&](auto tag) {
    using T = decltype(tag);
    const T a = static_cast<T>(p.alpha), b = static_cast<T>(p.beta);
    with_constant_op(op, [&](auto fixed_op) {
      map_elements<T>(
          grad_in, [=](T g, T xv, T yv) { return g * unary_derivative(UnaryOp(fixed_op), xv, yv, a, b); }, grad_out, x,
          y);
    });
  });
}

void CpuBackend::binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) {
  dispatch_all(out.dtype(), [&](auto tag) {
    using T = decltype(tag);
    switch (op) {  // the hot arithmetic ops get their own loops so they vectorize
      case BinaryOp::Add: return map_elements<T>(out, [](T u, T v) { return u + v; }, a, b);
      case BinaryOp::Sub: return map_elements<T>(out, [](T u, T v) { return u - v; }, a, b);
      case BinaryOp::Mul: return map_elements<T>(out, [](T u, T v) { return u * v; }, a, b);
      case BinaryOp::Div: return map_elements<T>(out, [](T u, T v) { return u / v; }, a, b);
      default: return map_elements<T>(out, [op](T u, T v) { return binary_forward(op, u, v); }, a, b);
    }
  });
}

void CpuBackend::where(const Tensor& cond, const Tensor& a, const Tensor& b, const Tensor& out) {
  dispatch_all(out.dtype(), [&](auto tag) {
    using T = decltype(tag);
    map_elements<T>(out, [](T c, T u, T v) { return c != T(0) ? u : v; }, cond, a, b);
  });
}

void CpuBackend::random(const Tensor& out, RandomDist dist, uint64_t seed, uint64_t offset, double a, double b) {
  dispatch_floating(out.dtype(), "random", [&](auto tag) {
    using T = decltype(tag);
    T* o = out.data<T>();
    const int64_t n = out.numel();
    parallel_for(n, n >= kParallelGrain, [&](int64_t i) {
      const uint64_t counter = offset + static_cast<uint64_t>(i);
      switch (dist) {
        case RandomDist::Uniform: o[i] = static_cast<T>(a + (b - a) * random_uniform(seed, counter)); break;
        case RandomDist::Normal: o[i] = static_cast<T>(a + b * random_normal(seed, offset + 2 * uint64_t(i))); break;
        case RandomDist::Bernoulli: o[i] = random_uniform(seed, counter) < a ? T(1) : T(0); break;
      }
    });
  });
}

// Chunks of whole cache lines spread over the threads; each chunk a vectorized loop over local
// pointers (stores through shared ones could alias the loads, which blocks vectorization).
void CpuBackend::adamw_update(const Tensor& param, const Tensor& grad, const Tensor& exp_avg,
                              const Tensor& exp_avg_sq, const AdamWStep& step) {
  dispatch_floating(param.dtype(), "adamw_update", [&](auto tag) {
    using T = decltype(tag);
    const AdamWCoefficients<T> c = adamw_coefficients<T>(step);
    const int64_t n = param.numel();
    constexpr int64_t kChunk = 4096;
    parallel_for((n + kChunk - 1) / kChunk, n >= kParallelGrain, [&](int64_t chunk) {
      T* __restrict p = param.data<T>();
      const T* __restrict g = grad.data<T>();
      T* __restrict m = exp_avg.data<T>();
      T* __restrict v = exp_avg_sq.data<T>();
      const int64_t end = std::min(n, (chunk + 1) * kChunk);
#pragma omp simd
      for (int64_t i = chunk * kChunk; i < end; ++i) adamw_element(p[i], g[i], m[i], v[i], c);
    });
  });
}

void CpuBackend::arange(const Tensor& out, double start, double step) {
  dispatch_all(out.dtype(), [&](auto tag) {
    using T = decltype(tag);
    T* o = static_cast<T*>(out.raw_data());
    for (int64_t i = 0; i < out.numel(); ++i) o[i] = static_cast<T>(start + step * static_cast<double>(i));
  });
}

}  // namespace ml
