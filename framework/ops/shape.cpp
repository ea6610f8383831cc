#include "framework/ops/shape.h"

#include <algorithm>
#include <numeric>
#include <optional>

#include "framework/ops/creation.h"
#include "framework/ops/elementwise.h"
#include "framework/ops/op_utils.h"

namespace ml {
using detail::op_error;

namespace {

// Resolves one -1 entry and checks that the element count is preserved.
Shape infer_shape(const char* op, const Shape& from, Shape to) {
  int64_t known = 1, infer_at = -1;
  for (size_t i = 0; i < to.size(); ++i) {
    if (to[i] == -1) {
      if (infer_at >= 0) op_error(op, "only one dimension can be -1 in " + shape_str(to));
      infer_at = static_cast<int64_t>(i);
    } else if (to[i] < 0) {
      op_error(op, "invalid size in " + shape_str(to));
    } else {
      known *= to[i];
    }
  }
  const int64_t total = numel_of(from);
  if (infer_at >= 0 && known != 0 && total % known == 0) to[infer_at] = total / known;
  if (numel_of(to) != total || (infer_at >= 0 && known == 0))
    op_error(op, "shape " + shape_str(to) + " is invalid for a tensor of shape " + shape_str(from));
  return to;
}

// A view of x with a new layout, recording `backward` (and `accumulate`, see AccumulateFn) when needed.
Tensor make_view(const char* op, const Tensor& x, const Shape& shape, const Shape& strides, int64_t offset,
                 BackwardFn backward, AccumulateFn accumulate = nullptr) {
  Tensor out = Tensor::view_of(x, shape, strides, offset);
  if (needs_grad(x)) record(out, op, {x}, std::move(backward), std::move(accumulate));
  return out;
}

// A new contiguous copy of x with the given dtype on the given device (no history).
Tensor copy_to_new(const Tensor& x, DType dtype, Device device) {
  NoGradGuard no_grad;
  Tensor out = Tensor::empty(x.shape(), dtype, device);
  if (device == x.device()) {
    backend_of(x).copy(x, out);
    return out;
  }
  // Across devices: convert on the source device, then move raw bytes through the host side.
  const Tensor src = x.is_contiguous() && x.dtype() == dtype ? x : copy_to_new(x, dtype, x.device());
  const size_t nbytes = static_cast<size_t>(out.numel()) * dtype_size(dtype);
  if (device.is_cpu())
    backend_of(src).copy_to_host(out.raw_data(), src.raw_data(), nbytes);
  else if (src.device().is_cpu())
    backend_for(device).copy_from_host(out.raw_data(), src.raw_data(), nbytes);
  else
    return copy_to_new(copy_to_new(src, dtype, cpu()), dtype, device);
  return out;
}

// The strides under which `to` reads the same elements as a view of shape `from` with strides
// `strides` read in row-major order, or nothing when no strides can (the view would need a copy).
// `from` splits into chunks of dims that are contiguous with each other (each dim's stride is the
// next one's stride times its size); a chunk can be regrouped into any run of `to`'s dims with the
// same element count, each new dim stepping over the chunk's innermost stride times the dims after
// it. PyTorch's reshape follows the same rule (computeStride).
std::optional<Shape> strides_for_view(const Shape& from, const Shape& strides, const Shape& to) {
  if (from.empty() || numel_of(from) == 0) return contiguous_strides(to);
  Shape to_strides(to.size());
  int64_t to_dim = static_cast<int64_t>(to.size()) - 1;
  int64_t chunk_elements = 1, regrouped = 1, inner_stride = strides.back();
  for (int64_t d = static_cast<int64_t>(from.size()) - 1; d >= 0; --d) {
    chunk_elements *= from[d];
    const bool chunk_ends = d == 0 || (from[d - 1] != 1 && strides[d - 1] != chunk_elements * inner_stride);
    if (!chunk_ends) continue;
    while (to_dim >= 0 && (regrouped < chunk_elements || to[to_dim] == 1)) {
      to_strides[to_dim] = regrouped * inner_stride;
      regrouped *= to[to_dim];
      --to_dim;
    }
    if (regrouped != chunk_elements) return std::nullopt;
    if (d > 0) {
      inner_stride = strides[d - 1];
      chunk_elements = regrouped = 1;
    }
  }
  if (to_dim != -1) return std::nullopt;
  return to_strides;
}

// x's elements in row-major order as shape `to` with `strides` (view and reshape); the gradient
// flows back reshaped to x's shape.
Tensor regrouped_view(const char* op, const Tensor& x, const Shape& to, const Shape& strides) {
  return make_view(op, x, to, strides, x.offset(), [from = x.shape()](const Tensor& g) { return Grads{g.reshape(from)}; });
}

}  // namespace

Tensor Tensor::view(const Shape& shape) const {
  if (!is_contiguous())
    op_error("view", "tensor of shape " + shape_str(this->shape()) + " is not contiguous; use reshape()");
  const Shape to = infer_shape("view", this->shape(), shape);
  return regrouped_view("view", *this, to, contiguous_strides(to));
}

// A view when the elements can be regrouped in place (a contiguous tensor, or a narrowed one split
// along a contiguous chunk, as attention's heads are), else a contiguous copy: as in PyTorch, the
// result may or may not share memory with the input.
Tensor Tensor::reshape(const Shape& shape) const {
  const Shape to = infer_shape("reshape", this->shape(), shape);
  const std::optional<Shape> strides = strides_for_view(this->shape(), this->strides(), to);
  if (!strides) return contiguous().view(to);
  return regrouped_view("reshape", *this, to, *strides);
}

Tensor Tensor::permute(const std::vector<int64_t>& dims) const {
  if (static_cast<int64_t>(dims.size()) != dim())
    op_error("permute", "got " + std::to_string(dims.size()) + " dims for a " + std::to_string(dim()) + "-d tensor");
  Shape shape(dims.size()), strides(dims.size());
  std::vector<int64_t> inverse(dims.size(), -1);
  for (size_t i = 0; i < dims.size(); ++i) {
    const int64_t d = normalize_dim(dims[i], dim(), "permute");
    if (inverse[d] != -1) op_error("permute", "repeated dim in permutation " + shape_str(dims));
    inverse[d] = static_cast<int64_t>(i);
    shape[i] = this->shape()[d];
    strides[i] = this->strides()[d];
  }
  return make_view("permute", *this, shape, strides, offset(),
                   [inverse](const Tensor& g) { return Grads{g.permute(inverse)}; });
}

Tensor Tensor::transpose(int64_t d0, int64_t d1) const {
  std::vector<int64_t> order(dim());
  std::iota(order.begin(), order.end(), 0);
  std::swap(order[normalize_dim(d0, dim(), "transpose")], order[normalize_dim(d1, dim(), "transpose")]);
  return permute(order);
}

Tensor Tensor::narrow(int64_t d, int64_t start, int64_t length) const {
  d = normalize_dim(d, dim(), "narrow");
  if (start < 0 || length < 0 || start + length > size(d))
    op_error("narrow", "range [" + std::to_string(start) + ", " + std::to_string(start + length) +
                           ") out of bounds for dim " + std::to_string(d) + " of " + shape_str(shape()));
  Shape shape = this->shape();
  shape[d] = length;
  // Backward: x's gradient is zero but for g in the narrowed range. When x already has a gradient
  // (q, k and v narrowed out of one projection), g is added into that range alone.
  return make_view(
      "narrow", *this, shape, strides(), offset() + start * strides()[d],
      [x = detach(), d, start, length](const Tensor& g) {
        Tensor gx = zeros_like(x);
        Tensor slot = gx.narrow(d, start, length);
        copy_(slot, g);
        return Grads{gx};
      },
      [d, start, length](const Tensor& g, const Tensor& x_grad) {
        Tensor slot = x_grad.narrow(d, start, length);
        add_(slot, g);
      });
}

Tensor Tensor::unsqueeze(int64_t d) const {
  d = normalize_dim(d, dim() + 1, "unsqueeze");
  Shape shape = this->shape(), strides = this->strides();
  shape.insert(shape.begin() + d, 1);
  strides.insert(strides.begin() + d, d < dim() ? this->strides()[d] * this->shape()[d] : 1);
  return make_view("unsqueeze", *this, shape, strides, offset(),
                   [from = this->shape()](const Tensor& g) { return Grads{g.reshape(from)}; });
}

Tensor Tensor::squeeze(int64_t d) const {
  d = normalize_dim(d, dim(), "squeeze");
  if (dim() == 0 || size(d) != 1) return *this;
  Shape shape = this->shape(), strides = this->strides();
  shape.erase(shape.begin() + d);
  strides.erase(strides.begin() + d);
  return make_view("squeeze", *this, shape, strides, offset(),
                   [from = this->shape()](const Tensor& g) { return Grads{g.reshape(from)}; });
}

Tensor Tensor::expand(const Shape& shape) const {
  if (shape.size() < this->shape().size())
    op_error("expand", "cannot expand " + shape_str(this->shape()) + " to fewer dims " + shape_str(shape));
  Shape target = shape;
  const size_t lead = shape.size() - this->shape().size();
  for (size_t i = 0; i < this->shape().size(); ++i) {
    if (target[lead + i] == -1) target[lead + i] = this->shape()[i];
    if (this->shape()[i] != 1 && this->shape()[i] != target[lead + i])
      op_error("expand", "cannot expand " + shape_str(this->shape()) + " to " + shape_str(shape));
  }
  const Tensor v = detail::broadcast_view(*this, target);
  // The engine sums the gradient back to this tensor's shape.
  return make_view("expand", *this, v.shape(), v.strides(), v.offset(), [](const Tensor& g) { return Grads{g}; });
}

Tensor Tensor::flatten(int64_t start_dim, int64_t end_dim) const {
  if (dim() == 0) return reshape({1});
  start_dim = normalize_dim(start_dim, dim(), "flatten");
  end_dim = normalize_dim(end_dim, dim(), "flatten");
  Shape shape(this->shape().begin(), this->shape().begin() + start_dim);
  int64_t merged = 1;
  for (int64_t d = start_dim; d <= end_dim; ++d) merged *= size(d);
  shape.push_back(merged);
  shape.insert(shape.end(), this->shape().begin() + end_dim + 1, this->shape().end());
  return reshape(shape);
}

Tensor Tensor::contiguous() const { return is_contiguous() ? *this : clone(); }

Tensor Tensor::clone() const {
  Tensor out = copy_to_new(*this, dtype(), device());
  if (needs_grad(*this)) record(out, "clone", {*this}, [](const Tensor& g) { return Grads{g}; });
  return out;
}

Tensor Tensor::to(Device target) const {
  if (target == device()) return *this;
  Tensor out = copy_to_new(*this, dtype(), target);
  if (needs_grad(*this)) record(out, "to", {*this}, [from = device()](const Tensor& g) { return Grads{g.to(from)}; });
  return out;
}

Tensor Tensor::to(DType target) const {
  if (target == dtype()) return *this;
  Tensor out = copy_to_new(*this, target, device());
  if (needs_grad(*this) && is_floating(target))
    record(out, "to", {*this}, [from = dtype()](const Tensor& g) { return Grads{g.to(from)}; });
  return out;
}

Tensor cat(const std::vector<Tensor>& tensors, int64_t dim) {
  if (tensors.empty()) op_error("cat", "expected at least one tensor");
  const Tensor& first = tensors[0];
  dim = normalize_dim(dim, first.dim(), "cat");
  Shape shape = first.shape();
  shape[dim] = 0;
  for (const Tensor& t : tensors) {
    detail::check_compatible("cat", first, t);
    bool same = t.dim() == first.dim();
    for (int64_t d = 0; same && d < t.dim(); ++d) same = d == dim || t.size(d) == first.size(d);
    if (!same) op_error("cat", "shapes " + shape_str(first.shape()) + " and " + shape_str(t.shape()) +
                                   " differ outside dim " + std::to_string(dim));
    shape[dim] += t.size(dim);
  }
  Tensor out = Tensor::empty(shape, first.dtype(), first.device());
  std::vector<int64_t> starts;
  int64_t start = 0;
  for (const Tensor& t : tensors) {
    starts.push_back(start);
    NoGradGuard no_grad;
    backend_of(t).copy(t, out.narrow(dim, start, t.size(dim)));
    start += t.size(dim);
  }
  bool any_grad = false;
  for (const Tensor& t : tensors) any_grad = any_grad || needs_grad(t);
  if (any_grad)
    record(out, "cat", tensors, [dim, starts, tensors](const Tensor& g) {
      Grads grads;
      for (size_t i = 0; i < tensors.size(); ++i) grads.push_back(g.narrow(dim, starts[i], tensors[i].size(dim)));
      return grads;
    });
  return out;
}

Tensor stack(const std::vector<Tensor>& tensors, int64_t dim) {
  if (tensors.empty()) op_error("stack", "expected at least one tensor");
  std::vector<Tensor> expanded;
  for (const Tensor& t : tensors) {
    if (t.shape() != tensors[0].shape())
      op_error("stack", "shapes " + shape_str(tensors[0].shape()) + " and " + shape_str(t.shape()) + " differ");
    expanded.push_back(t.unsqueeze(normalize_dim(dim, t.dim() + 1, "stack")));
  }
  return cat(expanded, dim);
}

std::vector<Tensor> split(const Tensor& x, int64_t split_size, int64_t dim) {
  dim = normalize_dim(dim, x.dim(), "split");
  if (split_size <= 0) op_error("split", "split_size must be positive, got " + std::to_string(split_size));
  std::vector<Tensor> parts;
  for (int64_t start = 0; start < x.size(dim); start += split_size)
    parts.push_back(x.narrow(dim, start, std::min(split_size, x.size(dim) - start)));
  return parts;
}

std::vector<Tensor> chunk(const Tensor& x, int64_t chunks, int64_t dim) {
  if (chunks <= 0) op_error("chunk", "chunks must be positive, got " + std::to_string(chunks));
  const int64_t len = x.size(dim);
  return split(x, std::max<int64_t>(1, (len + chunks - 1) / chunks), dim);
}

static void check_index(const char* op, const Tensor& x, const Tensor& index) {
  detail::check_defined(op, index);
  if (index.dtype() != DType::Int64)
    op_error(op, std::string("index must be int64, got ") + dtype_name(index.dtype()));
  if (index.device() != x.device()) op_error(op, "index is on " + index.device().str() + ", input on " + x.device().str());
}

Tensor index_select(const Tensor& x, int64_t dim, const Tensor& index) {
  check_index("index_select", x, index);
  dim = normalize_dim(dim, x.dim(), "index_select");
  if (index.dim() != 1) op_error("index_select", "index must be 1-d, got " + shape_str(index.shape()));
  Shape shape = x.shape();
  shape[dim] = index.numel();
  Tensor out = Tensor::empty(shape, x.dtype(), x.device());
  const Tensor idx = index.contiguous();
  backend_of(x).index_select(x.detach().contiguous(), dim, idx, out);
  if (needs_grad(x))
    record(out, "index_select", {x}, [x = x.detach(), dim, idx](const Tensor& g) {
      Tensor gx = zeros_like(x);
      backend_of(gx).index_add(gx, dim, idx, g.contiguous());
      return Grads{gx};
    });
  return out;
}

Tensor& index_add_(Tensor& self, int64_t dim, const Tensor& index, const Tensor& src) {
  detail::check_inplace("index_add_", self);
  check_index("index_add_", self, index);
  detail::check_compatible("index_add_", self, src);
  dim = normalize_dim(dim, self.dim(), "index_add_");
  if (index.dim() != 1) op_error("index_add_", "index must be 1-d, got " + shape_str(index.shape()));
  Shape expected = self.shape();
  expected[dim] = index.numel();
  if (src.shape() != expected)
    op_error("index_add_", "src " + shape_str(src.shape()) + " must be " + shape_str(expected) + " for self " +
                               shape_str(self.shape()) + " and " + std::to_string(index.numel()) + " indices");
  if (!self.is_contiguous()) op_error("index_add_", "self must be contiguous");
  backend_of(self).index_add(self, dim, index.contiguous(), src.contiguous());
  return self;
}

Tensor gather(const Tensor& x, int64_t dim, const Tensor& index) {
  check_index("gather", x, index);
  dim = normalize_dim(dim, x.dim(), "gather");
  if (index.dim() != x.dim()) op_error("gather", "index " + shape_str(index.shape()) + " and input " +
                                                     shape_str(x.shape()) + " differ in rank");
  for (int64_t d = 0; d < x.dim(); ++d)
    if (d != dim && index.size(d) > x.size(d))
      op_error("gather", "index " + shape_str(index.shape()) + " larger than input " + shape_str(x.shape()));
  Tensor out = Tensor::empty(index.shape(), x.dtype(), x.device());
  const Tensor idx = index.contiguous();
  backend_of(x).gather(x, dim, idx, out);
  if (needs_grad(x))
    record(out, "gather", {x}, [x = x.detach(), dim, idx](const Tensor& g) {
      return Grads{scatter_add(zeros_like(x), dim, idx, g)};
    });
  return out;
}

Tensor scatter_add(const Tensor& base, int64_t dim, const Tensor& index, const Tensor& src) {
  check_index("scatter_add", base, index);
  detail::check_compatible("scatter_add", base, src);
  dim = normalize_dim(dim, base.dim(), "scatter_add");
  if (index.shape() != src.shape() || index.dim() != base.dim())
    op_error("scatter_add", "index " + shape_str(index.shape()) + " and src " + shape_str(src.shape()) +
                                " must match, with the rank of base " + shape_str(base.shape()));
  Tensor out;
  {
    NoGradGuard no_grad;
    out = base.contiguous().clone();
  }
  const Tensor idx = index.contiguous();
  backend_of(out).scatter_add(out, dim, idx, src.contiguous());
  if (needs_grad(base, src))
    record(out, "scatter_add", {base, src}, [dim, idx](const Tensor& g) { return Grads{g, gather(g, dim, idx)}; });
  return out;
}

}  // namespace ml
