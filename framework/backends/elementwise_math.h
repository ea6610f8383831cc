// The per-element math of the unary and binary kernels, shared by the CPU and CUDA backends so
// that each op's formula (and its derivative, right beside it) is written once.
#pragma once
#include <cmath>

#include "framework/backend.h"
#include "framework/random.h"  // ML_HOST_DEVICE

namespace ml {

namespace elementwise {

constexpr double kSqrt2OverPi = 0.7978845608028654;
constexpr double kGeluCubic = 0.044715;
constexpr double kInvSqrt2 = 0.7071067811865476;
constexpr double kInvSqrt2Pi = 0.3989422804014327;

template <typename T>
ML_HOST_DEVICE inline T sigmoid(T x) { return T(1) / (T(1) + std::exp(-x)); }

// y = op(x)
template <typename T>
ML_HOST_DEVICE inline T unary_forward(UnaryOp op, T x, T a, T b) {
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
ML_HOST_DEVICE inline T unary_derivative(UnaryOp op, T x, T y, T a, T b) {
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

}  // namespace elementwise

}  // namespace ml
