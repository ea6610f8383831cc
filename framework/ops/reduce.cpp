#include "framework/ops/reduce.h"

#include <algorithm>

#include "framework/ops/creation.h"
#include "framework/ops/elementwise.h"
#include "framework/ops/op_utils.h"
#include "framework/ops/shape.h"

namespace ml {

namespace {

struct ReducePlan {
  std::vector<int64_t> axes;  // normalized, sorted
  Shape keep_shape;           // x's shape with reduced axes set to 1
  Shape out_shape;            // keep_shape, or with those axes dropped
  int64_t reduced = 1;        // elements per output
};

ReducePlan plan_reduce(const char* op, const Tensor& x, const std::vector<int64_t>& axes, bool keepdim) {
  ReducePlan p;
  p.axes = detail::normalize_axes(op, axes, x.dim());
  p.keep_shape = x.shape();
  for (int64_t a : p.axes) {
    p.reduced *= x.size(a);
    p.keep_shape[a] = 1;
  }
  for (int64_t d = 0; d < x.dim(); ++d)
    if (keepdim || std::find(p.axes.begin(), p.axes.end(), d) == p.axes.end()) p.out_shape.push_back(p.keep_shape[d]);
  return p;
}

// Whether the reduced axes are exactly the first k (k < ndim) of a contiguous x.
bool sums_leading_axes(const Tensor& x, const ReducePlan& p) {
  if (!x.is_contiguous() || p.axes.empty() || p.axes.size() == static_cast<size_t>(x.dim()) || p.reduced == 0)
    return false;
  for (size_t i = 0; i < p.axes.size(); ++i)
    if (p.axes[i] != static_cast<int64_t>(i)) return false;
  return true;
}

// Runs the backend row reduction: kept axes become rows, reduced axes the row contents.
std::pair<Tensor, Tensor> reduce_forward(ReduceOp op, const char* name, const Tensor& x, const ReducePlan& p,
                                         bool with_indices) {
  detail::check_floating(name, x);
  if ((op == ReduceOp::Max || op == ReduceOp::Min) && p.reduced == 0)
    detail::op_error(name, "reduction over an empty dimension");
  Tensor out = Tensor::empty(p.out_shape, x.dtype(), x.device());
  if (op == ReduceOp::Sum && sums_leading_axes(x, p)) {
    // Summing over the leading axes (bias gradients, batch means) is ones[1, R] @ x[R, C]: one
    // BLAS call instead of transposing x so that the reduced axes become rows.
    const int64_t reduced = p.reduced, kept = std::max<int64_t>(out.numel(), 1);
    const Tensor ones_row = full({1, 1, reduced}, 1.0, x.dtype(), x.device());
    backend_of(x).gemm(ones_row, Tensor::view_of(x, {1, reduced, kept}, {0, kept, 1}, x.offset()),
                       Tensor::view_of(out, {1, 1, kept}, {0, kept, 1}, 0), 1.0, 0.0, GemmMath::Exact);
    return {out, Tensor()};
  }
  std::vector<int64_t> order;
  for (int64_t d = 0; d < x.dim(); ++d)
    if (std::find(p.axes.begin(), p.axes.end(), d) == p.axes.end()) order.push_back(d);
  order.insert(order.end(), p.axes.begin(), p.axes.end());
  Tensor rows;
  {
    NoGradGuard no_grad;
    rows = x.permute(order).contiguous();
  }
  Tensor indices = with_indices ? Tensor::empty(p.out_shape, DType::Int64, x.device()) : Tensor();
  backend_of(x).reduce_rows(op, rows, out, indices);
  return {out, indices};
}

}  // namespace

Tensor sum(const Tensor& x, const std::vector<int64_t>& axes, bool keepdim) {
  const ReducePlan p = plan_reduce("sum", x, axes, keepdim);
  Tensor out = reduce_forward(ReduceOp::Sum, "sum", x, p, false).first;
  if (needs_grad(x))
    record(out, "sum", {x}, [shape = x.shape(), keep = p.keep_shape](const Tensor& g) {
      return Grads{g.reshape(keep).expand(shape)};
    });
  return out;
}

Tensor sum_of_squares(const Tensor& x, const std::vector<int64_t>& axes, bool keepdim) {
  const ReducePlan p = plan_reduce("sum_of_squares", x, axes, keepdim);
  Tensor out = reduce_forward(ReduceOp::SumOfSquares, "sum_of_squares", x, p, false).first;
  if (needs_grad(x))
    record(out, "sum_of_squares", {x}, [x, keep = p.keep_shape](const Tensor& g) {
      return Grads{mul(x, mul(g.reshape(keep), 2.0))};
    });
  return out;
}

Tensor mean(const Tensor& x, const std::vector<int64_t>& axes, bool keepdim) {
  const ReducePlan p = plan_reduce("mean", x, axes, keepdim);
  return mul(sum(x, axes, keepdim), 1.0 / static_cast<double>(p.reduced));
}

static Tensor extreme(ReduceOp op, const char* name, const Tensor& x, const std::vector<int64_t>& axes, bool keepdim) {
  const ReducePlan p = plan_reduce(name, x, axes, keepdim);
  Tensor out = reduce_forward(op, name, x, p, false).first;
  if (needs_grad(x))
    record(out, name, {x}, [x, keep = p.keep_shape, axes = p.axes, out = out.detach()](const Tensor& g) {
      const Tensor hit = eq(x, out.reshape(keep));
      return Grads{div(mul(hit, g.reshape(keep)), sum(hit, axes, true))};
    });
  return out;
}
Tensor amax(const Tensor& x, const std::vector<int64_t>& axes, bool keepdim) {
  return extreme(ReduceOp::Max, "amax", x, axes, keepdim);
}
Tensor amin(const Tensor& x, const std::vector<int64_t>& axes, bool keepdim) {
  return extreme(ReduceOp::Min, "amin", x, axes, keepdim);
}

static std::pair<Tensor, Tensor> extreme_along(ReduceOp op, const char* name, const Tensor& x, int64_t dim,
                                               bool keepdim) {
  const int64_t d = normalize_dim(dim, x.dim(), name);
  const ReducePlan p = plan_reduce(name, x, {d}, keepdim);
  auto [values, indices] = reduce_forward(op, name, x, p, true);
  if (needs_grad(x))
    record(values, name, {x}, [x, d, keep = p.keep_shape, idx = indices.reshape(p.keep_shape)](const Tensor& g) {
      return Grads{scatter_add(zeros_like(x), d, idx, g.reshape(keep).contiguous())};
    });
  return {values, indices};
}
std::pair<Tensor, Tensor> max(const Tensor& x, int64_t dim, bool keepdim) {
  return extreme_along(ReduceOp::Max, "max", x, dim, keepdim);
}
std::pair<Tensor, Tensor> min(const Tensor& x, int64_t dim, bool keepdim) {
  return extreme_along(ReduceOp::Min, "min", x, dim, keepdim);
}
Tensor argmax(const Tensor& x, int64_t dim, bool keepdim) {
  NoGradGuard no_grad;
  return max(x, dim, keepdim).second;
}

std::pair<Tensor, Tensor> topk(const Tensor& x, int64_t k, int64_t dim, TopkOrder order) {
  detail::check_floating("topk", x);
  if (x.dim() == 0) detail::op_error("topk", "expected a tensor of at least 1 dimension, got a 0-d tensor");
  const int64_t d = normalize_dim(dim, x.dim(), "topk");
  const int64_t n = x.size(d);
  if (k < 0 || k > n)
    detail::op_error("topk", "k = " + std::to_string(k) + " outside [0, " + std::to_string(n) + "] for dim " +
                                 std::to_string(d) + " of " + shape_str(x.shape()));
  const int64_t last = x.dim() - 1;
  Tensor rows;
  {
    NoGradGuard no_grad;
    rows = (d == last ? x : x.transpose(d, last)).contiguous();
  }
  Shape out_shape = rows.shape();
  out_shape.back() = k;
  Tensor values = Tensor::empty(out_shape, x.dtype(), x.device());
  Tensor indices = Tensor::empty(out_shape, DType::Int64, x.device());
  if (values.numel() > 0) backend_of(x).topk(rows, k, order, values, indices);
  if (d != last) {
    values = values.transpose(d, last).contiguous();
    indices = indices.transpose(d, last).contiguous();
  }
  if (needs_grad(x))
    record(values, "topk", {x}, [shape = x.shape(), dtype = x.dtype(), device = x.device(), d, indices](const Tensor& g) {
      return Grads{scatter_add(zeros(shape, dtype, device), d, indices, g.contiguous())};
    });
  return {values, indices};
}

Tensor var(const Tensor& x, const std::vector<int64_t>& axes, bool keepdim, int64_t correction) {
  const ReducePlan p = plan_reduce("var", x, axes, keepdim);
  if (p.reduced - correction <= 0)
    detail::op_error("var", "needs more than " + std::to_string(correction) + " elements, got " +
                                std::to_string(p.reduced) + " in " + shape_str(x.shape()));
  const Tensor centered = sub(x, mean(x, axes, true));
  return mul(sum(mul(centered, centered), axes, keepdim), 1.0 / static_cast<double>(p.reduced - correction));
}

Tensor norm(const Tensor& x, const std::vector<int64_t>& axes, bool keepdim) {
  return sqrt(sum_of_squares(x, axes, keepdim));
}

}  // namespace ml
