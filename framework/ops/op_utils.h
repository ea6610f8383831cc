// Checks and helpers shared by the op implementations (not part of the public op API).
#pragma once
#include <string>

#include "framework/autograd.h"
#include "framework/backend.h"
#include "framework/tensor.h"

namespace ml::detail {

// Throws "<op>: <what>" as std::invalid_argument.
[[noreturn]] void op_error(const char* op, const std::string& what);
void check_defined(const char* op, const Tensor& t);
void check_floating(const char* op, const Tensor& t);
// Same device and dtype, else an error naming the op and both tensors.
void check_compatible(const char* op, const Tensor& a, const Tensor& b);
Shape broadcast_shapes(const char* op, const Shape& a, const Shape& b);
// A stride-0 view of t at a broadcast-compatible shape (no autograd; kernels read through it).
Tensor broadcast_view(const Tensor& t, const Shape& shape);
Tensor empty_like(const Tensor& t);
// In-place ops write without history: refused on a tensor that requires grad while grad mode is on.
void check_inplace(const char* op, const Tensor& self);
// Sorted, de-duplicated, normalized axes; empty input means all axes.
std::vector<int64_t> normalize_axes(const char* op, const std::vector<int64_t>& axes, int64_t ndim);

}  // namespace ml::detail
