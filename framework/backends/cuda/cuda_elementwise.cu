// Elementwise kernels: one grid-stride kernel per arity, the per-element math shared with the
// CPU backend (backends/elementwise_math.h).
#include "framework/backends/cuda/cuda_backend_impl.cuh"
#include "framework/backends/cuda/cuda_common.cuh"
#include "framework/backends/elementwise_math.h"
#include "framework/random.h"

namespace ml {
using namespace cuda_detail;

namespace {

// f applied to the inputs' elements at their offsets off[1..N-1] (off[0] is the output's).
template <typename TIn, int N, typename F>
__device__ auto apply_at(F f, const std::array<const TIn*, N - 1>& in, const int64_t (&off)[N]) {
  if constexpr (N == 1) return f();
  else if constexpr (N == 2) return f(in[0][off[1]]);
  else if constexpr (N == 3) return f(in[0][off[1]], in[1][off[2]]);
  else return f(in[0][off[1]], in[1][off[2]], in[2][off[3]]);
}

// Elements each thread takes per pass when every operand is contiguous: independent loads in
// flight, which one load per thread leaves the memory system short of (bench ops on an H200: a
// copy at ~2 TB/s of its ~4.8).
constexpr int kContiguousUnroll = 4;

// out[i] = f(in_0[i], ..., in_{N-2}[i]) over a strided layout of N operands (out first). Contiguous
// operands go kContiguousUnroll elements a pass (all loaded before any is stored: an in-place op
// reads and writes each element in the same thread), the rest of them and strided ones one a pass.
template <typename TOut, typename TIn, int N, typename F>
__global__ void map_kernel(TOut* out, StridedLayout<N> layout, std::array<const TIn*, N - 1> in, int64_t n, F f) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (layout.contiguous) {
    for (; i + (kContiguousUnroll - 1) * stride < n; i += kContiguousUnroll * stride) {
      TOut results[kContiguousUnroll];
#pragma unroll
      for (int u = 0; u < kContiguousUnroll; ++u) {
        int64_t off[N];
        for (int k = 0; k < N; ++k) off[k] = i + u * stride;
        results[u] = apply_at<TIn, N>(f, in, off);
      }
#pragma unroll
      for (int u = 0; u < kContiguousUnroll; ++u) out[i + u * stride] = results[u];
    }
  }
  for (; i < n; i += stride) {
    int64_t off[N];
    layout.offsets(i, off);
    out[off[0]] = apply_at<TIn, N>(f, in, off);
  }
}

template <typename TOut, typename TIn = TOut, typename F, typename... Tensors>
void launch_map(const char* where, const Tensor& out, F f, const Tensors&... in) {
  constexpr int N = 1 + sizeof...(in);
  const int64_t n = out.numel();
  if (n == 0) return;
  const StridedLayout<N> layout = layout_of<N>({&out, &in...});
  const int64_t per_thread = layout.contiguous ? kContiguousUnroll : 1;
  map_kernel<TOut, TIn, N><<<blocks_for((n + per_thread - 1) / per_thread), kThreads, 0, stream()>>>(
      ptr<TOut>(out), layout, std::array<const TIn*, N - 1>{ptr<const TIn>(in)...}, n, f);
  ML_CUDA_LAUNCHED(where);
}

// Functors rather than device lambdas: nvcc does not allow __device__ lambdas inside the generic
// lambdas that dispatch on dtype.
template <typename T>
struct Constant {
  T value;
  __device__ T operator()() const { return value; }
};
template <typename D, typename S>
struct Cast {
  __device__ D operator()(S v) const { return static_cast<D>(v); }
};
template <typename T>
struct UnaryForward {
  UnaryOp op;
  T a, b;
  __device__ T operator()(T x) const { return elementwise::unary_forward(op, x, a, b); }
};
template <typename T>
struct UnaryBackward {
  UnaryOp op;
  T a, b;
  __device__ T operator()(T g, T x, T y) const { return g * elementwise::unary_derivative(op, x, y, a, b); }
};
template <typename T>
struct BinaryForward {
  BinaryOp op;
  __device__ T operator()(T u, T v) const { return elementwise::binary_forward(op, u, v); }
};
template <typename T>
struct Select {
  __device__ T operator()(T c, T u, T v) const { return c != T(0) ? u : v; }
};

}  // namespace

void CudaBackend::fill(const Tensor& out, double value) {
  dispatch_all(out.dtype(), [&](auto tag) {
    using T = decltype(tag);
    launch_map<T>("fill", out, Constant<T>{static_cast<T>(value)});
  });
}

void CudaBackend::copy(const Tensor& src, const Tensor& dst) {
  dispatch_all(src.dtype(), [&](auto src_tag) {
    using S = decltype(src_tag);
    dispatch_all(dst.dtype(), [&](auto dst_tag) {
      using D = decltype(dst_tag);
      launch_map<D, S>("copy", dst, Cast<D, S>{}, src);
    });
  });
}

void CudaBackend::unary(UnaryOp op, const Tensor& x, const Tensor& out, UnaryParams p) {
  dispatch_floating(x.dtype(), "unary", [&](auto tag) {
    using T = decltype(tag);
    launch_map<T>("unary", out, UnaryForward<T>{op, static_cast<T>(p.alpha), static_cast<T>(p.beta)}, x);
  });
}

void CudaBackend::unary_backward(UnaryOp op, const Tensor& grad_out, const Tensor& x, const Tensor& y,
                                 const Tensor& grad_in, UnaryParams p) {
  dispatch_floating(x.dtype(), "unary_backward", [&](auto tag) {
    using T = decltype(tag);
    launch_map<T>("unary_backward", grad_in, UnaryBackward<T>{op, static_cast<T>(p.alpha), static_cast<T>(p.beta)},
                  grad_out, x, y);
  });
}

void CudaBackend::binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) {
  dispatch_all(out.dtype(), [&](auto tag) {
    using T = decltype(tag);
    launch_map<T>("binary", out, BinaryForward<T>{op}, a, b);
  });
}

void CudaBackend::where(const Tensor& cond, const Tensor& a, const Tensor& b, const Tensor& out) {
  dispatch_all(out.dtype(), [&](auto tag) {
    using T = decltype(tag);
    launch_map<T>("where", out, Select<T>{}, cond, a, b);
  });
}

namespace {
template <typename T>
__global__ void random_kernel(T* out, int64_t n, RandomDist dist, uint64_t seed, uint64_t offset, double a, double b) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const uint64_t counter = offset + static_cast<uint64_t>(i);
    switch (dist) {
      case RandomDist::Uniform: out[i] = static_cast<T>(a + (b - a) * random_uniform(seed, counter)); break;
      case RandomDist::Normal: out[i] = static_cast<T>(a + b * random_normal(seed, offset + 2 * uint64_t(i))); break;
      case RandomDist::Bernoulli: out[i] = random_uniform(seed, counter) < a ? T(1) : T(0); break;
    }
  }
}

template <typename T>
__global__ void arange_kernel(T* out, int64_t n, double start, double step) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = static_cast<T>(start + step * static_cast<double>(i));
}
}  // namespace

void CudaBackend::random(const Tensor& out, RandomDist dist, uint64_t seed, uint64_t offset, double a, double b) {
  dispatch_floating(out.dtype(), "random", [&](auto tag) {
    using T = decltype(tag);
    random_kernel<T><<<blocks_for(out.numel()), kThreads, 0, stream()>>>(ptr<T>(out), out.numel(), dist, seed, offset, a, b);
    ML_CUDA_LAUNCHED("random");
  });
}

void CudaBackend::arange(const Tensor& out, double start, double step) {
  dispatch_all(out.dtype(), [&](auto tag) {
    using T = decltype(tag);
    arange_kernel<T><<<blocks_for(out.numel()), kThreads, 0, stream()>>>(ptr<T>(out), out.numel(), start, step);
    ML_CUDA_LAUNCHED("arange");
  });
}

namespace {
template <typename T>
__global__ void adamw_kernel(T* param, const T* grad, T* exp_avg, T* exp_avg_sq, int64_t n,
                             elementwise::AdamWCoefficients<T> c) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    elementwise::adamw_element(param[i], grad[i], exp_avg[i], exp_avg_sq[i], c);
}
}  // namespace

void CudaBackend::adamw_update(const Tensor& param, const Tensor& grad, const Tensor& exp_avg,
                               const Tensor& exp_avg_sq, const AdamWStep& step) {
  const int64_t n = param.numel();
  if (n == 0) return;
  dispatch_floating(param.dtype(), "adamw_update", [&](auto tag) {
    using T = decltype(tag);
    adamw_kernel<T><<<blocks_for(n), kThreads, 0, stream()>>>(ptr<T>(param), ptr<const T>(grad), ptr<T>(exp_avg),
                                                              ptr<T>(exp_avg_sq), n,
                                                              elementwise::adamw_coefficients<T>(step));
    ML_CUDA_LAUNCHED("adamw_update");
  });
}

}  // namespace ml
