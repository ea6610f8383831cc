#include "framework/ops/op_utils.h"

#include <algorithm>
#include <stdexcept>

namespace ml::detail {

void op_error(const char* op, const std::string& what) { throw std::invalid_argument(std::string(op) + ": " + what); }

void check_defined(const char* op, const Tensor& t) {
  if (!t.defined()) op_error(op, "got an undefined tensor");
}

void check_inplace(const char* op, const Tensor& self) {
  check_defined(op, self);
  if (grad_enabled() && self.requires_grad())
    op_error(op, "in-place update of a tensor that requires grad; wrap it in NoGradGuard");
}

void check_floating(const char* op, const Tensor& t) {
  check_defined(op, t);
  if (!is_floating(t.dtype())) op_error(op, std::string("expected a floating tensor, got ") + dtype_name(t.dtype()));
}

void check_compatible(const char* op, const Tensor& a, const Tensor& b) {
  check_defined(op, a);
  check_defined(op, b);
  if (a.device() != b.device())
    op_error(op, "tensors on different devices: " + a.device().str() + " and " + b.device().str());
  if (a.dtype() != b.dtype())
    op_error(op, std::string("dtype mismatch: ") + dtype_name(a.dtype()) + " " + shape_str(a.shape()) + " vs " +
                     dtype_name(b.dtype()) + " " + shape_str(b.shape()));
}

Shape broadcast_shapes(const char* op, const Shape& a, const Shape& b) {
  const size_t n = std::max(a.size(), b.size());
  Shape out(n);
  for (size_t i = 0; i < n; ++i) {
    const int64_t da = i < n - a.size() ? 1 : a[i - (n - a.size())];
    const int64_t db = i < n - b.size() ? 1 : b[i - (n - b.size())];
    if (da != db && da != 1 && db != 1)
      op_error(op, "shapes " + shape_str(a) + " and " + shape_str(b) + " cannot be broadcast together");
    out[i] = da == 1 ? db : da;
  }
  return out;
}

Tensor broadcast_view(const Tensor& t, const Shape& shape) {
  if (t.shape() == shape) return t;
  const size_t lead = shape.size() - t.shape().size();
  Shape strides(shape.size(), 0);
  for (size_t i = 0; i < t.shape().size(); ++i)
    strides[lead + i] = t.shape()[i] == shape[lead + i] ? t.strides()[i] : 0;
  return Tensor::view_of(t, shape, strides, t.offset());
}

Tensor empty_like(const Tensor& t) { return Tensor::empty(t.shape(), t.dtype(), t.device()); }

std::vector<int64_t> normalize_axes(const char* op, const std::vector<int64_t>& axes, int64_t ndim) {
  std::vector<int64_t> out;
  if (axes.empty()) {
    for (int64_t d = 0; d < ndim; ++d) out.push_back(d);
    return out;
  }
  for (int64_t a : axes) out.push_back(normalize_dim(a, ndim, op));
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

}  // namespace ml::detail
