// Raw little-endian element bytes of tensors, shared by the safetensors and .npy formats.
#pragma once
#include <cstdint>
#include <ostream>

#include "framework/tensor.h"

namespace ml {

// Both formats store little-endian data, which we read and write with plain memcpy.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "framework/io assumes a little-endian host");

// numel(shape) * dtype_size(dtype); throws std::runtime_error for negative dimensions or overflow.
uint64_t tensor_byte_size(const Shape& shape, DType dtype);
// Writes the elements in C order; the tensor may live on any device and have any layout.
void write_tensor_bytes(std::ostream& out, const Tensor& tensor);
// A new CPU tensor holding a copy of tensor_byte_size(shape, dtype) bytes (no alignment needed).
Tensor tensor_from_bytes(const char* bytes, const Shape& shape, DType dtype);

}  // namespace ml
