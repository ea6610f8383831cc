// Elementwise ops with NumPy broadcasting, differentiable unless noted.
#pragma once
#include "framework/backend.h"  // AdamWStep
#include "framework/tensor.h"

namespace ml {

Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);
Tensor pow(const Tensor& a, const Tensor& b);
Tensor maximum(const Tensor& a, const Tensor& b);
Tensor minimum(const Tensor& a, const Tensor& b);

Tensor add(const Tensor& x, double s);
Tensor mul(const Tensor& x, double s);
Tensor pow(const Tensor& x, double exponent);
Tensor rdiv(double s, const Tensor& x);  // s / x
Tensor neg(const Tensor& x);
Tensor exp(const Tensor& x);
Tensor log(const Tensor& x);
Tensor sqrt(const Tensor& x);
Tensor rsqrt(const Tensor& x);
Tensor abs(const Tensor& x);
Tensor sign(const Tensor& x);  // gradient 0
Tensor tanh(const Tensor& x);
Tensor sigmoid(const Tensor& x);
Tensor relu(const Tensor& x);
Tensor relu2(const Tensor& x);  // relu(x)^2 (modded-nanogpt's MLP activation)
enum class GeluApprox { None, Tanh };
Tensor gelu(const Tensor& x, GeluApprox approximate = GeluApprox::None);
Tensor silu(const Tensor& x);
// The activations above chosen by their UnaryOp, for layers that take one as a setting (batch_norm2d
// fuses it into its own pass). activation_name gives the op's name, or nullptr for a UnaryOp that is
// not one of them; checked_activation_name refuses such an op in an error from `caller`, and so does
// activation.
const char* activation_name(UnaryOp op);
const char* checked_activation_name(const char* caller, UnaryOp op);
Tensor activation(UnaryOp op, const Tensor& x);
Tensor clamp(const Tensor& x, double min_value, double max_value);

// cond ? a : b (cond nonzero = true); gradients flow to a and b, none to cond.
Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b);
// x with value wherever mask is nonzero.
Tensor masked_fill(const Tensor& x, const Tensor& mask, double value);

// Comparisons give 1/0 in the inputs' dtype; not differentiable.
Tensor gt(const Tensor& a, const Tensor& b);
Tensor lt(const Tensor& a, const Tensor& b);
Tensor eq(const Tensor& a, const Tensor& b);

// In-place updates, for optimizers and buffers: no history, and refused on a tensor that
// requires grad while grad mode is on. `other` broadcasts to self's shape.
Tensor& add_(Tensor& self, const Tensor& other, double alpha = 1.0);
Tensor& add_(Tensor& self, double s);
Tensor& mul_(Tensor& self, const Tensor& other);
Tensor& mul_(Tensor& self, double s);
// One AdamW step in place, in one pass (Backend::adamw_update; optimizers/adamw.cpp has the same
// step one op per term): param, grad and the moments exp_avg, exp_avg_sq contiguous, of one shape,
// dtype and device.
void adamw_update_(Tensor& param, const Tensor& grad, Tensor& exp_avg, Tensor& exp_avg_sq, const AdamWStep& step);
Tensor& div_(Tensor& self, const Tensor& other);
Tensor& copy_(Tensor& self, const Tensor& src);
Tensor& fill_(Tensor& self, double value);
Tensor& zero_(Tensor& self);

inline Tensor operator+(const Tensor& a, const Tensor& b) { return add(a, b); }
inline Tensor operator-(const Tensor& a, const Tensor& b) { return sub(a, b); }
inline Tensor operator*(const Tensor& a, const Tensor& b) { return mul(a, b); }
inline Tensor operator/(const Tensor& a, const Tensor& b) { return div(a, b); }
inline Tensor operator-(const Tensor& x) { return neg(x); }
inline Tensor operator+(const Tensor& x, double s) { return add(x, s); }
inline Tensor operator+(double s, const Tensor& x) { return add(x, s); }
inline Tensor operator-(const Tensor& x, double s) { return add(x, -s); }
inline Tensor operator-(double s, const Tensor& x) { return add(neg(x), s); }
inline Tensor operator*(const Tensor& x, double s) { return mul(x, s); }
inline Tensor operator*(double s, const Tensor& x) { return mul(x, s); }
inline Tensor operator/(const Tensor& x, double s) { return mul(x, 1.0 / s); }
inline Tensor operator/(double s, const Tensor& x) { return rdiv(s, x); }

}  // namespace ml
