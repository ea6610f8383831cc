// Elementwise CPU kernels: each unary op's derivative sits right beside its definition.
#include <cmath>

#include "framework/backends/cpu/cpu_backend.h"
#include "framework/backends/cpu/cpu_loops.h"
#include "framework/random.h"

namespace ml {
using namespace cpu_loops;

namespace {

constexpr double kSqrt2OverPi = 0.7978845608028654;
constexpr double kGeluCubic = 0.044715;
constexpr double kInvSqrt2 = 0.7071067811865476;
constexpr double kInvSqrt2Pi = 0.3989422804014327;

template <typename T>
T sigmoid(T x) { return T(1) / (T(1) + std::exp(-x)); }

// y = op(x)
template <typename T>
T unary_forward(UnaryOp op, T x, T a, T b) {
  switch (op) {
    case UnaryOp::Neg: return -x;
    case UnaryOp::Exp: return std::exp(x);
    case UnaryOp::Log: return std::log(x);
    case UnaryOp::Sqrt: return std::sqrt(x);
    case UnaryOp::Rsqrt: return T(1) / std::sqrt(x);
    case UnaryOp::Abs: return std::abs(x);
    case UnaryOp::Sign: return T((x > 0) - (x < 0));
    case UnaryOp::Tanh: return std::tanh(x);
    case UnaryOp::Sigmoid: return sigmoid(x);
    case UnaryOp::Relu: return x > 0 ? x : T(0);
    case UnaryOp::Relu2: return x > 0 ? x * x : T(0);
    case UnaryOp::GeluTanh: return T(0.5) * x * (T(1) + std::tanh(T(kSqrt2OverPi) * (x + T(kGeluCubic) * x * x * x)));
    case UnaryOp::GeluErf: return T(0.5) * x * (T(1) + std::erf(x * T(kInvSqrt2)));
    case UnaryOp::Silu: return x * sigmoid(x);
    case UnaryOp::AddScalar: return x + a;
    case UnaryOp::MulScalar: return x * a;
    case UnaryOp::PowScalar: return std::pow(x, a);
    case UnaryOp::RDivScalar: return a / x;
    case UnaryOp::Clamp: return x < a ? a : (x > b ? b : x);
  }
  return x;
}

// dy/dx given x and y = op(x)
template <typename T>
T unary_derivative(UnaryOp op, T x, T y, T a, T b) {
  switch (op) {
    case UnaryOp::Neg: return T(-1);
    case UnaryOp::Exp: return y;
    case UnaryOp::Log: return T(1) / x;
    case UnaryOp::Sqrt: return T(0.5) / y;
    case UnaryOp::Rsqrt: return T(-0.5) * y * y * y;
    case UnaryOp::Abs: return T((x > 0) - (x < 0));
    case UnaryOp::Sign: return T(0);
    case UnaryOp::Tanh: return T(1) - y * y;
    case UnaryOp::Sigmoid: return y * (T(1) - y);
    case UnaryOp::Relu: return x > 0 ? T(1) : T(0);
    case UnaryOp::Relu2: return x > 0 ? T(2) * x : T(0);
    case UnaryOp::GeluTanh: {
      const T t = std::tanh(T(kSqrt2OverPi) * (x + T(kGeluCubic) * x * x * x));
      return T(0.5) * (T(1) + t) + T(0.5) * x * (T(1) - t * t) * T(kSqrt2OverPi) * (T(1) + T(3 * kGeluCubic) * x * x);
    }
    case UnaryOp::GeluErf:
      return T(0.5) * (T(1) + std::erf(x * T(kInvSqrt2))) + x * T(kInvSqrt2Pi) * std::exp(T(-0.5) * x * x);
    case UnaryOp::Silu: {
      const T s = sigmoid(x);
      return s * (T(1) + x * (T(1) - s));
    }
    case UnaryOp::AddScalar: return T(1);
    case UnaryOp::MulScalar: return a;
    case UnaryOp::PowScalar: return a * std::pow(x, a - T(1));
    case UnaryOp::RDivScalar: return -y / x;
    case UnaryOp::Clamp: return (x >= a && x <= b) ? T(1) : T(0);
  }
  return T(0);
}

template <typename T>
T binary_forward(BinaryOp op, T a, T b) {
  switch (op) {
    case BinaryOp::Add: return a + b;
    case BinaryOp::Sub: return a - b;
    case BinaryOp::Mul: return a * b;
    case BinaryOp::Div: return a / b;
    case BinaryOp::Pow: return static_cast<T>(std::pow(a, b));
    case BinaryOp::Maximum: return a > b ? a : b;
    case BinaryOp::Minimum: return a < b ? a : b;
    case BinaryOp::Greater: return T(a > b);
    case BinaryOp::Less: return T(a < b);
    case BinaryOp::Equal: return T(a == b);
  }
  return a;
}

}  // namespace

void CpuBackend::fill(const Tensor& out, double value) {
  dispatch_all(out.dtype(), [&](auto tag) {
    using T = decltype(tag);
    map_elements<T>(out, [v = static_cast<T>(value)]() { return v; });
  });
}

void CpuBackend::copy(const Tensor& src, const Tensor& dst) {
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

// Switching on `op` inside the element loop keeps one loop per kernel; the branch is perfectly
// predictable, and the arithmetic (exp, tanh, erf) dominates.
void CpuBackend::unary(UnaryOp op, const Tensor& x, const Tensor& out, UnaryParams p) {
  dispatch_floating(x.dtype(), "unary", [&](auto tag) {
    using T = decltype(tag);
    const T a = static_cast<T>(p.alpha), b = static_cast<T>(p.beta);
    map_elements<T>(out, [=](T v) { return unary_forward(op, v, a, b); }, x);
  });
}

void CpuBackend::unary_backward(UnaryOp op, const Tensor& grad_out, const Tensor& x, const Tensor& y,
                                const Tensor& grad_in, UnaryParams p) {
  dispatch_floating(x.dtype(), "unary_backward", [&](auto tag) {
    using T = decltype(tag);
    const T a = static_cast<T>(p.alpha), b = static_cast<T>(p.beta);
    map_elements<T>(grad_in, [=](T g, T xv, T yv) { return g * unary_derivative(op, xv, yv, a, b); }, grad_out, x, y);
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
#pragma omp parallel for schedule(static) if (n >= kParallelGrain)
    for (int64_t i = 0; i < n; ++i) {
      const uint64_t counter = offset + static_cast<uint64_t>(i);
      switch (dist) {
        case RandomDist::Uniform: o[i] = static_cast<T>(a + (b - a) * random_uniform(seed, counter)); break;
        case RandomDist::Normal: o[i] = static_cast<T>(a + b * random_normal(seed, offset + 2 * uint64_t(i))); break;
        case RandomDist::Bernoulli: o[i] = random_uniform(seed, counter) < a ? T(1) : T(0); break;
      }
    }
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
