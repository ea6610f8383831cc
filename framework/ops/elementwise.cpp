#include "framework/ops/elementwise.h"

#include "framework/ops/creation.h"
#include "framework/ops/op_utils.h"

namespace ml {
using detail::broadcast_view;
using detail::empty_like;

namespace {

Tensor unary_op(UnaryOp op, const char* name, const Tensor& x, UnaryParams p = {}) {
  detail::check_floating(name, x);
  Tensor y = empty_like(x);
  backend_of(x).unary(op, x, y, p);
  if (needs_grad(x))
    record(y, name, {x}, [op, p, x, y = y.detach()](const Tensor& g) {
      Tensor gx = empty_like(x);
      backend_of(x).unary_backward(op, g, x, y, gx, p);
      return Grads{gx};
    });
  return y;
}

// Computes op(a, b) with broadcasting; no history.
Tensor binary_forward(BinaryOp op, const char* name, const Tensor& a, const Tensor& b) {
  detail::check_compatible(name, a, b);
  const Shape shape = detail::broadcast_shapes(name, a.shape(), b.shape());
  Tensor out = Tensor::empty(shape, a.dtype(), a.device());
  backend_of(a).binary(op, broadcast_view(a, shape), broadcast_view(b, shape), out);
  return out;
}

// self = op(self, other) in place, other broadcast to self's shape.
Tensor& binary_inplace(BinaryOp op, const char* name, Tensor& self, const Tensor& other) {
  detail::check_inplace(name, self);
  detail::check_compatible(name, self, other);
  if (detail::broadcast_shapes(name, self.shape(), other.shape()) != self.shape())
    detail::op_error(name, "cannot broadcast " + shape_str(other.shape()) + " into " + shape_str(self.shape()));
  backend_of(self).binary(op, self, broadcast_view(other, self.shape()), self);
  return self;
}

}  // namespace

Tensor add(const Tensor& a, const Tensor& b) {
  Tensor out = binary_forward(BinaryOp::Add, "add", a, b);
  if (needs_grad(a, b)) record(out, "add", {a, b}, [](const Tensor& g) { return Grads{g, g}; });
  return out;
}

Tensor sub(const Tensor& a, const Tensor& b) {
  Tensor out = binary_forward(BinaryOp::Sub, "sub", a, b);
  if (needs_grad(a, b)) record(out, "sub", {a, b}, [](const Tensor& g) { return Grads{g, neg(g)}; });
  return out;
}

Tensor mul(const Tensor& a, const Tensor& b) {
  Tensor out = binary_forward(BinaryOp::Mul, "mul", a, b);
  if (needs_grad(a, b))
    record(out, "mul", {a, b}, [a, b](const Tensor& g) {
      return Grads{a.requires_grad() ? mul(g, b) : Tensor(), b.requires_grad() ? mul(g, a) : Tensor()};
    });
  return out;
}

Tensor div(const Tensor& a, const Tensor& b) {
  Tensor out = binary_forward(BinaryOp::Div, "div", a, b);
  if (needs_grad(a, b))
    record(out, "div", {a, b}, [a, b, out = out.detach()](const Tensor& g) {
      const Tensor ga = div(g, b);
      return Grads{ga, b.requires_grad() ? neg(mul(ga, out)) : Tensor()};
    });
  return out;
}

Tensor pow(const Tensor& a, const Tensor& b) {
  Tensor out = binary_forward(BinaryOp::Pow, "pow", a, b);
  if (needs_grad(a, b))
    record(out, "pow", {a, b}, [a, b, out = out.detach()](const Tensor& g) {
      return Grads{a.requires_grad() ? mul(g, mul(b, pow(a, sub(b, ones_like(b))))) : Tensor(),
                   b.requires_grad() ? mul(g, mul(out, log(a))) : Tensor()};
    });
  return out;
}

// The gradient goes to whichever input is selected; ties go to `a`.
static Tensor select_extreme(BinaryOp op, const char* name, const Tensor& a, const Tensor& b) {
  Tensor out = binary_forward(op, name, a, b);
  if (needs_grad(a, b))
    record(out, name, {a, b}, [a, b, op](const Tensor& g) {
      const Tensor take_a = binary_forward(op == BinaryOp::Maximum ? BinaryOp::Less : BinaryOp::Greater, "mask", b, a);
      const Tensor a_wins = add(take_a, eq(a, b));
      return Grads{mul(g, a_wins), mul(g, sub(ones_like(a_wins), a_wins))};
    });
  return out;
}
Tensor maximum(const Tensor& a, const Tensor& b) { return select_extreme(BinaryOp::Maximum, "maximum", a, b); }
Tensor minimum(const Tensor& a, const Tensor& b) { return select_extreme(BinaryOp::Minimum, "minimum", a, b); }

Tensor gt(const Tensor& a, const Tensor& b) { return binary_forward(BinaryOp::Greater, "gt", a, b); }
Tensor lt(const Tensor& a, const Tensor& b) { return binary_forward(BinaryOp::Less, "lt", a, b); }
Tensor eq(const Tensor& a, const Tensor& b) { return binary_forward(BinaryOp::Equal, "eq", a, b); }

Tensor add(const Tensor& x, double s) { return unary_op(UnaryOp::AddScalar, "add", x, {s, 0.0}); }
Tensor mul(const Tensor& x, double s) { return unary_op(UnaryOp::MulScalar, "mul", x, {s, 0.0}); }
Tensor pow(const Tensor& x, double e) { return unary_op(UnaryOp::PowScalar, "pow", x, {e, 0.0}); }
Tensor rdiv(double s, const Tensor& x) { return unary_op(UnaryOp::RDivScalar, "rdiv", x, {s, 0.0}); }
Tensor neg(const Tensor& x) { return unary_op(UnaryOp::Neg, "neg", x); }
Tensor exp(const Tensor& x) { return unary_op(UnaryOp::Exp, "exp", x); }
Tensor log(const Tensor& x) { return unary_op(UnaryOp::Log, "log", x); }
Tensor sqrt(const Tensor& x) { return unary_op(UnaryOp::Sqrt, "sqrt", x); }
Tensor rsqrt(const Tensor& x) { return unary_op(UnaryOp::Rsqrt, "rsqrt", x); }
Tensor abs(const Tensor& x) { return unary_op(UnaryOp::Abs, "abs", x); }
Tensor sign(const Tensor& x) { return unary_op(UnaryOp::Sign, "sign", x); }
Tensor tanh(const Tensor& x) { return activation(UnaryOp::Tanh, x); }
Tensor sigmoid(const Tensor& x) { return activation(UnaryOp::Sigmoid, x); }
Tensor relu(const Tensor& x) { return activation(UnaryOp::Relu, x); }
Tensor relu2(const Tensor& x) { return activation(UnaryOp::Relu2, x); }
Tensor gelu(const Tensor& x, GeluApprox approximate) {
  return activation(approximate == GeluApprox::Tanh ? UnaryOp::GeluTanh : UnaryOp::GeluErf, x);
}
Tensor silu(const Tensor& x) { return activation(UnaryOp::Silu, x); }

const char* activation_name(UnaryOp op) {
  switch (op) {
    case UnaryOp::Tanh: return "tanh";
    case UnaryOp::Sigmoid: return "sigmoid";
    case UnaryOp::Relu: return "relu";
    case UnaryOp::Relu2: return "relu2";
    case UnaryOp::GeluTanh: return "gelu_tanh";
    case UnaryOp::GeluErf: return "gelu";
    case UnaryOp::Silu: return "silu";
    default: return nullptr;
  }
}

const char* checked_activation_name(const char* caller, UnaryOp op) {
  const char* name = activation_name(op);
  if (!name) detail::op_error(caller, "UnaryOp " + std::to_string(static_cast<int>(op)) + " is not an activation");
  return name;
}

Tensor activation(UnaryOp op, const Tensor& x) { return unary_op(op, checked_activation_name("activation", op), x); }
Tensor clamp(const Tensor& x, double lo, double hi) {
  if (lo > hi) detail::op_error("clamp", "min " + std::to_string(lo) + " > max " + std::to_string(hi));
  return unary_op(UnaryOp::Clamp, "clamp", x, {lo, hi});
}

Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b) {
  detail::check_compatible("where", a, b);
  detail::check_defined("where", cond);
  if (cond.device() != a.device()) detail::op_error("where", "condition is on " + cond.device().str());
  const Shape shape = detail::broadcast_shapes("where", detail::broadcast_shapes("where", cond.shape(), a.shape()), b.shape());
  const Tensor c = cond.dtype() == a.dtype() ? cond : cond.to(a.dtype());
  Tensor out = Tensor::empty(shape, a.dtype(), a.device());
  backend_of(a).where(broadcast_view(c, shape), broadcast_view(a, shape), broadcast_view(b, shape), out);
  if (needs_grad(a, b))
    record(out, "where", {a, b}, [c](const Tensor& g) {
      const Tensor zero = zeros_like(g);
      return Grads{where(c, g, zero), where(c, zero, g)};
    });
  return out;
}

Tensor masked_fill(const Tensor& x, const Tensor& mask, double value) {
  return where(mask, full({}, value, x.dtype(), x.device()), x);
}

Tensor& add_(Tensor& self, const Tensor& other, double alpha) {
  return binary_inplace(BinaryOp::Add, "add_", self, alpha == 1.0 ? other : mul(other, alpha));
}
Tensor& add_(Tensor& self, double s) {
  detail::check_inplace("add_", self);
  backend_of(self).unary(UnaryOp::AddScalar, self, self, {s, 0.0});
  return self;
}
Tensor& mul_(Tensor& self, const Tensor& other) { return binary_inplace(BinaryOp::Mul, "mul_", self, other); }
Tensor& mul_(Tensor& self, double s) {
  detail::check_inplace("mul_", self);
  backend_of(self).unary(UnaryOp::MulScalar, self, self, {s, 0.0});
  return self;
}
void adamw_update_(Tensor& param, const Tensor& grad, Tensor& exp_avg, Tensor& exp_avg_sq, const AdamWStep& step) {
  detail::check_inplace("adamw_update_", param);
  detail::check_inplace("adamw_update_", exp_avg);
  detail::check_inplace("adamw_update_", exp_avg_sq);
  const std::initializer_list<const Tensor*> all{&param, &grad, &exp_avg, &exp_avg_sq};
  for (const Tensor* t : all) {
    detail::check_compatible("adamw_update_", param, *t);
    if (t->shape() != param.shape() || t->dtype() != param.dtype())
      detail::op_error("adamw_update_", "param " + shape_str(param.shape()) + " " + dtype_name(param.dtype()) +
                                            " with a tensor " + shape_str(t->shape()) + " " + dtype_name(t->dtype()) +
                                            ": all four need one shape and dtype");
  }
  for (const Tensor* t : all)
    if (!t->is_contiguous()) detail::op_error("adamw_update_", "all four tensors must be contiguous");
  backend_of(param).adamw_update(param, grad, exp_avg, exp_avg_sq, step);
}
Tensor& div_(Tensor& self, const Tensor& other) { return binary_inplace(BinaryOp::Div, "div_", self, other); }
Tensor& copy_(Tensor& self, const Tensor& src) {
  detail::check_inplace("copy_", self);
  detail::check_defined("copy_", src);
  if (detail::broadcast_shapes("copy_", self.shape(), src.shape()) != self.shape())
    detail::op_error("copy_", "cannot copy " + shape_str(src.shape()) + " into " + shape_str(self.shape()));
  const Tensor from = src.device() == self.device() ? src : src.to(self.device());
  backend_of(self).copy(broadcast_view(from, self.shape()), self);
  return self;
}
Tensor& fill_(Tensor& self, double value) {
  detail::check_inplace("fill_", self);
  backend_of(self).fill(self, value);
  return self;
}
Tensor& zero_(Tensor& self) { return fill_(self, 0.0); }

}  // namespace ml
