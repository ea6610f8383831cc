// The per-element math of the unary and binary kernels, shared by the CPU and CUDA backends so
// that each op's formula (and its derivative, right beside it) is written once.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "framework/backend.h"
#include "framework/random.h"  // ML_HOST_DEVICE

namespace ml {

namespace elementwise {

constexpr double kSqrt2OverPi = 0.7978845608028654;
constexpr double kGeluCubic = 0.044715;
constexpr double kInvSqrt2 = 0.7071067811865476;
constexpr double kInvSqrt2Pi = 0.3989422804014327;

// The element math must inline into the kernels' loops: one call per element keeps a loop from
// vectorizing. GCC's inliner left exp_approx and erf_approx out of line in the GELU loops (8.6% of
// the CNN's training step in erf_approx calls), and unary_forward once those two were inlined
// into it, hence the forced inlining.
#ifdef __CUDACC__
#define ML_ELEMENT_MATH __host__ __device__ __forceinline__
#else
#define ML_ELEMENT_MATH __attribute__((always_inline)) inline
#endif

// exp for float32 as straight-line arithmetic, so that loops using it vectorize (libm's expf is
// an opaque call): e^x = 2^n * e^r with n = round(x log2 e) and r = x - n ln2 (ln2 split in two
// parts for accuracy); e^r is its degree-6 Taylor polynomial (|r| <= ln2/2: relative error
// < 2e-7). exp_in_range is that arithmetic for x in [-87, 88], where 2^n stays a normal float;
// NaN stays NaN.
ML_ELEMENT_MATH float exp_in_range(float x) {
  const float round_shift = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float shifted = x * 1.44269504f + round_shift;
  const float n = shifted - round_shift;
  const float r = (x - n * 0.693145752f) - n * 1.42860677e-6f;
  const float poly =
      1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 + r * (1.0f / 720))))));
  int32_t n_int, shift_int;
  std::memcpy(&n_int, &shifted, 4);
  std::memcpy(&shift_int, &round_shift, 4);
  // Shifted as unsigned: for a NaN x the exponent field is garbage, and a signed shift would overflow.
  const uint32_t scale_bits = static_cast<uint32_t>(n_int - shift_int + 127) << 23;
  float scale;
  std::memcpy(&scale, &scale_bits, 4);
  return poly * scale;
}

// exp_in_range on every float: below -87 the result is 0 (libm gives at most 1.6e-38 there,
// subnormal from -87.3 on), so exp(-inf) is 0 as softmax's masked entries need; above 88 it stays
// at e^88 (libm overflows at 88.72). float64 keeps libm, so gradient checks stay exact.
ML_ELEMENT_MATH float exp_approx(float x) {
  const bool underflows = x < -87.0f;
  const float clamped = underflows ? -87.0f : (x > 88.0f ? 88.0f : x);
  return underflows ? 0.0f : exp_in_range(clamped);
}
ML_ELEMENT_MATH double exp_approx(double x) { return std::exp(x); }

// ln x for float32 as straight-line arithmetic, so that loops using it vectorize (libm's logf is a
// call), for positive normal x such as a softmax's normalizer (at least 1): x = m 2^e with m in
// [sqrt(1/2), sqrt(2)), and ln x = e ln2 + 2 atanh(t) with t = (m - 1) / (m + 1), |t| < 0.172,
// atanh t = t + t^3/3 + ... + t^9/9 (the next term is below 2e-9 of ln m). float64 keeps libm.
ML_ELEMENT_MATH float log_of_positive(float x) {
  constexpr int32_t kSqrtHalfBits = 0x3f3504f3;  // sqrt(1/2)
  int32_t bits;
  std::memcpy(&bits, &x, 4);
  const int32_t exponent = (bits - kSqrtHalfBits) >> 23;  // floor(log2(x / sqrt(1/2)))
  const int32_t m_bits = bits - exponent * (int32_t{1} << 23);
  float m;
  std::memcpy(&m, &m_bits, 4);
  const float t = (m - 1.0f) / (m + 1.0f), t2 = t * t;
  const float atanh = t * (1.0f + t2 * (1.0f / 3 + t2 * (1.0f / 5 + t2 * (1.0f / 7 + t2 * (1.0f / 9)))));
  const float e = static_cast<float>(exponent);
  return (e * 0.693145752f + e * 1.42860677e-6f) + 2.0f * atanh;
}
ML_ELEMENT_MATH double log_of_positive(double x) { return std::log(x); }

// e^x for x <= 0, as a term of a sum that also holds e^0 = 1 (a max-shifted softmax's normalizer):
// no upper clamp, and below -87 the term is e^-87 (1.6e-38) where exp_approx gives 0, which leaves
// such a sum as it was. Without those selects its vector code is about 20% cheaper (cross-entropy's
// forward is mostly this). NaN stays NaN.
ML_ELEMENT_MATH float exp_of_nonpositive_term(float x) { return exp_in_range(x < -87.0f ? -87.0f : x); }
ML_ELEMENT_MATH double exp_of_nonpositive_term(double x) { return std::exp(x); }

// erf for float32 by Abramowitz & Stegun 7.1.26 (absolute error < 1.5e-7 in exact arithmetic,
// < 5e-7 evaluated in float), vectorizable like exp_approx; float64 keeps libm.
// The formula is erf(|x|) = 1 - poly(t) e^(-x^2): erf_given_gauss takes e^(-x^2) from its caller,
// which GELU's derivative needs anyway (one exp instead of two per element).
ML_ELEMENT_MATH float erf_given_gauss(float x, float gauss) {
  const float ax = x < 0 ? -x : x;
  const float t = 1.0f / (1.0f + 0.3275911f * ax);
  const float poly = t * (0.254829592f + t * (-0.284496736f + t * (1.421413741f + t * (-1.453152027f + t * 1.061405429f))));
  const float y = 1.0f - poly * gauss;
  return x < 0 ? -y : y;
}
ML_ELEMENT_MATH float erf_approx(float x) { return erf_given_gauss(x, exp_approx(-x * x)); }
ML_ELEMENT_MATH double erf_approx(double x) { return std::erf(x); }

template <typename T>
ML_ELEMENT_MATH T sigmoid(T x) { return T(1) / (T(1) + exp_approx(-x)); }

// GELU's tanh form rewritten without tanh: 0.5 (1 + tanh(u)) = sigmoid(2u).
template <typename T>
ML_ELEMENT_MATH T gelu_tanh_gate(T x) { return sigmoid(T(2 * kSqrt2OverPi) * (x + T(kGeluCubic) * x * x * x)); }

// d/dx [x Phi(x)] = Phi(x) + x phi(x), with Phi(x) = (1 + erf(x / sqrt 2)) / 2 and phi(x) the
// normal density, whose exp(-x^2 / 2) is also the one erf(x / sqrt 2) needs.
ML_ELEMENT_MATH float gelu_erf_derivative(float x) {
  const float gauss = exp_approx(-0.5f * x * x);
  return 0.5f * (1.0f + erf_given_gauss(x * float(kInvSqrt2), gauss)) + x * float(kInvSqrt2Pi) * gauss;
}
ML_ELEMENT_MATH double gelu_erf_derivative(double x) {
  return 0.5 * (1.0 + std::erf(x * kInvSqrt2)) + x * kInvSqrt2Pi * std::exp(-0.5 * x * x);
}

// y = op(x)
template <typename T>
ML_ELEMENT_MATH T unary_forward(UnaryOp op, T x, T a, T b) {
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
    case UnaryOp::GeluTanh: return x * gelu_tanh_gate(x);
    case UnaryOp::GeluErf: return T(0.5) * x * (T(1) + erf_approx(x * T(kInvSqrt2)));
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
ML_ELEMENT_MATH T unary_derivative(UnaryOp op, T x, T y, T a, T b) {
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
    case UnaryOp::GeluTanh: {  // with s = sigmoid(2u): s + 2 x s (1 - s) du/dx
      const T s = gelu_tanh_gate(x);
      return s + T(2) * x * s * (T(1) - s) * T(kSqrt2OverPi) * (T(1) + T(3 * kGeluCubic) * x * x);
    }
    case UnaryOp::GeluErf: return gelu_erf_derivative(x);
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

// An activation's derivative from its input alone, for kernels that fuse the activation into
// another op and so keep no output of it: where the derivative reads y, y is recomputed.
template <typename T>
ML_ELEMENT_MATH T activation_derivative(UnaryOp op, T x) {
  return unary_derivative(op, x, unary_forward(op, x, T(0), T(0)), T(0), T(0));
}

// Calls body(std::integral_constant<UnaryOp, op>) for the activations that dominate training
// steps, so that their loops see `op` as a compile-time constant: the switch in the element math
// folds away and the loop vectorizes. Other ops share one loop that switches per element (the
// branch predicts perfectly; those ops are rare or memory-bound).
template <typename Body>
void with_constant_op(UnaryOp op, Body&& body) {
  switch (op) {
    case UnaryOp::GeluTanh: return body(std::integral_constant<UnaryOp, UnaryOp::GeluTanh>{});
    case UnaryOp::GeluErf: return body(std::integral_constant<UnaryOp, UnaryOp::GeluErf>{});
    case UnaryOp::Relu: return body(std::integral_constant<UnaryOp, UnaryOp::Relu>{});
    case UnaryOp::Relu2: return body(std::integral_constant<UnaryOp, UnaryOp::Relu2>{});
    case UnaryOp::Silu: return body(std::integral_constant<UnaryOp, UnaryOp::Silu>{});
    case UnaryOp::Sigmoid: return body(std::integral_constant<UnaryOp, UnaryOp::Sigmoid>{});
    case UnaryOp::MulScalar: return body(std::integral_constant<UnaryOp, UnaryOp::MulScalar>{});
    case UnaryOp::AddScalar: return body(std::integral_constant<UnaryOp, UnaryOp::AddScalar>{});
    default: return body(op);
  }
}

template <typename T>
ML_HOST_DEVICE inline T binary_forward(BinaryOp op, T a, T b) {
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

// AdamW's per-step scalars in the element type, worked out once per tensor.
template <typename T>
struct AdamWCoefficients {
  T decay, beta1, one_minus_beta1, beta2, one_minus_beta2, inv_sqrt_bias_correction2, eps, step_size;
};

template <typename T>
AdamWCoefficients<T> adamw_coefficients(const AdamWStep& s) {
  return {T(1.0 - s.lr * s.weight_decay), T(s.beta1),  T(1.0 - s.beta1), T(s.beta2), T(1.0 - s.beta2),
          T(1.0 / std::sqrt(s.bias_correction2)), T(s.eps), T(s.lr / s.bias_correction1)};
}

// One element of AdamW, in the order of optimizers/adamw.cpp's ops: decay, the two moments, then
// the step m / (sqrt(v) / sqrt(1 - b2^t) + eps) scaled by lr / (1 - b1^t).
template <typename T>
ML_ELEMENT_MATH void adamw_element(T& param, T grad, T& exp_avg, T& exp_avg_sq, const AdamWCoefficients<T>& c) {
  param *= c.decay;
  exp_avg = exp_avg * c.beta1 + c.one_minus_beta1 * grad;
  exp_avg_sq = exp_avg_sq * c.beta2 + c.one_minus_beta2 * (grad * grad);
  param -= c.step_size * (exp_avg / (std::sqrt(exp_avg_sq) * c.inv_sqrt_bias_correction2 + c.eps));
}

}  // namespace elementwise

}  // namespace ml
