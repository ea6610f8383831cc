// Dtype dispatch shared by the backends: calls f(T{}) with the element type of a dtype.
#pragma once
#include <stdexcept>
#include <string>

#include "framework/dtype.h"

namespace ml {

// T = float or double; any other dtype is an error naming the kernel.
template <typename F>
auto dispatch_floating(DType dtype, const char* kernel, F&& f) {
  switch (dtype) {
    case DType::Float32: return f(float{});
    case DType::Float64: return f(double{});
    default: throw std::invalid_argument(std::string(kernel) + ": expected a floating tensor, got " + dtype_name(dtype));
  }
}

// T = float, double or int64_t.
template <typename F>
auto dispatch_all(DType dtype, F&& f) {
  switch (dtype) {
    case DType::Float32: return f(float{});
    case DType::Float64: return f(double{});
    default: return f(int64_t{});
  }
}

}  // namespace ml
