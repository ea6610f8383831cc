#include "framework/tensor.h"

#include <cstdio>
#include <cstring>
#include <sstream>
#include <stdexcept>

#include "framework/autograd.h"
#include "framework/backend.h"

namespace ml {

const char* dtype_name(DType t) {
  switch (t) {
    case DType::Float32: return "float32";
    case DType::Float64: return "float64";
    case DType::Int64: return "int64";
  }
  return "?";
}

std::string Device::str() const { return is_cpu() ? "cpu" : "cuda:" + std::to_string(index); }

Device Device::parse(const std::string& s) {
  if (s == "cpu") return cpu();
  if (s == "cuda") return cuda(0);
  if (s.rfind("cuda:", 0) == 0 && s.size() > 5 && s.find_first_not_of("0123456789", 5) == std::string::npos)
    return cuda(std::stoi(s.substr(5)));
  throw std::invalid_argument("unknown device '" + s + "' (expected cpu, cuda or cuda:N)");
}

std::string shape_str(const Shape& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

int64_t numel_of(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

Shape contiguous_strides(const Shape& shape) {
  Shape strides(shape.size());
  int64_t s = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    strides[i] = s;
    s *= shape[i];
  }
  return strides;
}

int64_t normalize_dim(int64_t d, int64_t ndim, const char* op) {
  int64_t r = d < 0 ? d + ndim : d;
  if (r < 0 || r >= std::max<int64_t>(ndim, 1))
    throw std::out_of_range(std::string(op) + ": dimension " + std::to_string(d) + " out of range for a " +
                            std::to_string(ndim) + "-d tensor");
  return r;
}

std::shared_ptr<Storage> Storage::allocate(size_t nbytes, Device device) {
  auto s = std::make_shared<Storage>();
  s->device = device;
  s->nbytes = nbytes;
  s->backend = &backend_for(device);
  s->data = s->backend->allocate(nbytes);
  return s;
}

Storage::~Storage() {
  if (!data) return;
  try {
    backend->deallocate(data, nbytes);
  } catch (const std::exception& e) {  // report and leak the block rather than terminate
    std::fprintf(stderr, "muonlab: freeing %zu bytes on %s failed: %s\n", nbytes, device.str().c_str(), e.what());
  }
}

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  for (int64_t d : shape)
    if (d < 0) throw std::invalid_argument("empty: negative dimension in shape " + shape_str(shape));
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = Storage::allocate(static_cast<size_t>(numel_of(shape)) * dtype_size(dtype), device);
  impl->shape = shape;
  impl->strides = contiguous_strides(shape);
  impl->dtype = dtype;
  return Tensor(impl);
}

template <typename T>
static DType dtype_of() {
  if constexpr (std::is_same_v<T, float>) return DType::Float32;
  else if constexpr (std::is_same_v<T, double>) return DType::Float64;
  else {
    static_assert(std::is_same_v<T, int64_t>, "tensor element type must be float, double or int64_t");
    return DType::Int64;
  }
}

template <typename T>
Tensor Tensor::from_data(const T* data, const Shape& shape, Device device) {
  Tensor t = empty(shape, dtype_of<T>(), device);
  backend_for(device).copy_from_host(t.raw_data(), data, static_cast<size_t>(t.numel()) * sizeof(T));
  return t;
}
template Tensor Tensor::from_data<float>(const float*, const Shape&, Device);
template Tensor Tensor::from_data<double>(const double*, const Shape&, Device);
template Tensor Tensor::from_data<int64_t>(const int64_t*, const Shape&, Device);

Tensor Tensor::view_of(const Tensor& base, const Shape& shape, const Shape& strides, int64_t offset) {
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = base.impl_->storage;
  impl->shape = shape;
  impl->strides = strides;
  impl->offset = offset;
  impl->dtype = base.impl_->dtype;
  return Tensor(impl);
}

int64_t Tensor::size(int64_t d) const { return impl_->shape[normalize_dim(d, dim(), "size")]; }

bool Tensor::is_contiguous() const {
  int64_t expected = 1;
  for (size_t i = impl_->shape.size(); i-- > 0;) {
    if (impl_->shape[i] == 1) continue;
    if (impl_->strides[i] != expected) return false;
    expected *= impl_->shape[i];
  }
  return true;
}

void* Tensor::raw_data() const {
  return static_cast<char*>(impl_->storage->data) + impl_->offset * static_cast<int64_t>(dtype_size(impl_->dtype));
}

template <typename T>
T* Tensor::data() const {
  if (dtype_of<T>() != dtype())
    throw std::invalid_argument(std::string("data<") + dtype_name(dtype_of<T>()) + ">() on a " +
                                dtype_name(dtype()) + " tensor");
  return static_cast<T*>(raw_data());
}
template float* Tensor::data<float>() const;
template double* Tensor::data<double>() const;
template int64_t* Tensor::data<int64_t>() const;

template <typename T>
std::vector<T> Tensor::to_vector() const {
  Tensor src = dtype() == dtype_of<T>() ? contiguous() : to(dtype_of<T>());
  std::vector<T> out(static_cast<size_t>(src.numel()));
  backend_of(src).copy_to_host(out.data(), src.raw_data(), out.size() * sizeof(T));
  return out;
}
template std::vector<float> Tensor::to_vector<float>() const;
template std::vector<double> Tensor::to_vector<double>() const;
template std::vector<int64_t> Tensor::to_vector<int64_t>() const;

double Tensor::item() const {
  if (numel() != 1) throw std::invalid_argument("item: expected a one-element tensor, got shape " + shape_str(shape()));
  return to_vector<double>()[0];
}

std::string Tensor::str() const {
  if (!defined()) return "Tensor(undefined)";
  std::ostringstream os;
  os << "Tensor(" << shape_str(shape()) << ", " << dtype_name(dtype()) << ", " << device().str();
  if (numel() <= 16) {
    os << ", [";
    auto v = to_vector<double>();
    for (size_t i = 0; i < v.size(); ++i) os << (i ? ", " : "") << v[i];
    os << "]";
  }
  return os.str() + ")";
}

Tensor& Tensor::requires_grad_(bool on) {
  if (on && !is_floating(dtype()))
    throw std::invalid_argument(std::string("requires_grad_: only floating tensors can require grad, got ") +
                                dtype_name(dtype()));
  if (!is_leaf() && !on) throw std::invalid_argument("requires_grad_(false) on a non-leaf tensor; use detach()");
  impl_->requires_grad = on;
  return *this;
}

void Tensor::set_grad(const Tensor& g) {
  if (g.defined() && (g.shape() != shape() || g.dtype() != dtype()))
    throw std::invalid_argument("set_grad: gradient " + g.str() + " does not match tensor " + shape_str(shape()) +
                                " " + dtype_name(dtype()));
  impl_->grad = g.impl_ptr();
}

Tensor Tensor::detach() const { return view_of(*this, shape(), strides(), offset()); }

}  // namespace ml
