#include "framework/io/tensor_bytes.h"

#include <cstring>
#include <limits>
#include <stdexcept>
#include <vector>

namespace ml {
namespace {

template <typename T>
void write_values(std::ostream& out, const Tensor& tensor) {
  std::vector<T> values = tensor.to_vector<T>();
  out.write(reinterpret_cast<const char*>(values.data()), static_cast<std::streamsize>(values.size() * sizeof(T)));
}

}  // namespace

uint64_t tensor_byte_size(const Shape& shape, DType dtype) {
  uint64_t bytes = dtype_size(dtype);
  for (int64_t d : shape) {
    if (d < 0) throw std::runtime_error("negative dimension in shape " + shape_str(shape));
    if (d != 0 && bytes > std::numeric_limits<uint64_t>::max() / static_cast<uint64_t>(d))
      throw std::runtime_error("shape " + shape_str(shape) + " is too large");
    bytes *= static_cast<uint64_t>(d);
  }
  return bytes;
}

void write_tensor_bytes(std::ostream& out, const Tensor& tensor) {
  switch (tensor.dtype()) {
    case DType::Float32:
      write_values<float>(out, tensor);
      break;
    case DType::Float64:
      write_values<double>(out, tensor);
      break;
    case DType::Int64:
      write_values<int64_t>(out, tensor);
      break;
  }
}

Tensor tensor_from_bytes(const char* bytes, const Shape& shape, DType dtype) {
  uint64_t nbytes = tensor_byte_size(shape, dtype);
  Tensor tensor = Tensor::empty(shape, dtype, cpu());
  if (nbytes > 0) std::memcpy(tensor.raw_data(), bytes, nbytes);
  return tensor;
}

}  // namespace ml
