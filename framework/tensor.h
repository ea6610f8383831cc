// Tensor: a view (shape, strides, offset) onto shared storage, plus the autograd fields.
// Layering: this file knows nothing about ops; ops/ builds on it, backends execute kernels.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "framework/dtype.h"

namespace ml {

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& shape);
int64_t numel_of(const Shape& shape);
Shape contiguous_strides(const Shape& shape);

class Backend;

// Owns one device allocation; freed through the backend that made it, which is kept rather than
// looked up again: the look-up queries the driver, and after a sticky CUDA error that would throw
// inside this destructor and terminate the process, hiding the error. The destructor never throws.
struct Storage {
  void* data = nullptr;
  size_t nbytes = 0;
  Device device;
  Backend* backend = nullptr;
  static std::shared_ptr<Storage> allocate(size_t nbytes, Device device);
  Storage() = default;
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  ~Storage();
};

struct Node;
class Tensor;

struct TensorImpl {
  std::shared_ptr<Storage> storage;
  Shape shape;
  Shape strides;       // in elements
  int64_t offset = 0;  // in elements
  DType dtype = DType::Float32;
  bool requires_grad = false;
  std::shared_ptr<TensorImpl> grad;
  std::shared_ptr<Node> grad_fn;  // null for leaves
};

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  // Uninitialized contiguous tensor.
  static Tensor empty(const Shape& shape, DType dtype = DType::Float32, Device device = cpu());
  // Copies `count` host elements of type T (float, double or int64_t) into a new tensor.
  template <typename T>
  static Tensor from_data(const T* data, const Shape& shape, Device device = cpu());
  template <typename T>
  static Tensor from_vector(const std::vector<T>& values, const Shape& shape, Device device = cpu()) {
    return from_data(values.data(), shape, device);
  }
  // A tensor viewing `storage` with the given layout (no copy).
  static Tensor view_of(const Tensor& base, const Shape& shape, const Shape& strides, int64_t offset);

  bool defined() const { return impl_ != nullptr; }
  TensorImpl* impl() const { return impl_.get(); }
  const std::shared_ptr<TensorImpl>& impl_ptr() const { return impl_; }
  bool is_same(const Tensor& o) const { return impl_ == o.impl_; }

  const Shape& shape() const { return impl_->shape; }
  const Shape& strides() const { return impl_->strides; }
  int64_t offset() const { return impl_->offset; }
  int64_t dim() const { return static_cast<int64_t>(impl_->shape.size()); }
  // Size of dimension d; negative d counts from the end.
  int64_t size(int64_t d) const;
  int64_t numel() const { return numel_of(impl_->shape); }
  DType dtype() const { return impl_->dtype; }
  Device device() const { return impl_->storage->device; }
  bool is_contiguous() const;
  const std::shared_ptr<Storage>& storage() const { return impl_->storage; }

  // Pointer to element 0 of this view; checks that T matches the dtype.
  template <typename T>
  T* data() const;
  void* raw_data() const;

  // Host copies (any device, any layout).
  template <typename T>
  std::vector<T> to_vector() const;
  double item() const;  // the value of a one-element tensor, as double
  std::string str() const;  // shape, dtype and (for small tensors) values, for messages

  // ------------------------------------------------------------ autograd
  bool requires_grad() const { return impl_->requires_grad; }
  Tensor& requires_grad_(bool on = true);
  bool is_leaf() const { return impl_->grad_fn == nullptr; }
  const std::shared_ptr<Node>& grad_fn() const { return impl_->grad_fn; }
  Tensor grad() const { return impl_->grad ? Tensor(impl_->grad) : Tensor(); }
  void set_grad(const Tensor& g);
  void zero_grad() { impl_->grad.reset(); }
  // Back-propagates from this tensor (a scalar unless `grad_output` is given); frees the graph.
  void backward(const Tensor& grad_output = Tensor()) const;
  // Same storage, no history, requires_grad false.
  Tensor detach() const;

  // ------------------------------------------------------------ views and copies (defined in ops/shape.cpp)
  Tensor reshape(const Shape& shape) const;
  Tensor view(const Shape& shape) const;  // like reshape, but never copies (throws instead)
  Tensor permute(const std::vector<int64_t>& dims) const;
  Tensor transpose(int64_t d0, int64_t d1) const;
  Tensor t() const { return transpose(0, 1); }
  Tensor narrow(int64_t dim, int64_t start, int64_t length) const;
  Tensor unsqueeze(int64_t dim) const;
  Tensor squeeze(int64_t dim) const;
  Tensor expand(const Shape& shape) const;
  Tensor flatten(int64_t start_dim = 0, int64_t end_dim = -1) const;
  Tensor contiguous() const;
  Tensor clone() const;
  Tensor to(Device device) const;
  Tensor to(DType dtype) const;

 private:
  std::shared_ptr<TensorImpl> impl_;
};

// Normalizes a possibly negative dimension index against `ndim`; `op` names the caller in errors.
int64_t normalize_dim(int64_t d, int64_t ndim, const char* op);

}  // namespace ml
