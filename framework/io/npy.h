// NumPy .npy files (format versions 1.0 and 2.0) holding little-endian C-order
// float32, float64 or int64 arrays.
#pragma once
#include <string>

#include "framework/tensor.h"

namespace ml {

// A CPU tensor; throws std::runtime_error naming the file for anything else (fortran_order,
// other dtypes, big-endian data, truncated or trailing data, malformed headers).
Tensor load_npy(const std::string& path);
// Writes atomically (see write_file_atomic) the header numpy itself writes; the tensor may be
// on any device and non-contiguous.
void save_npy(const std::string& path, const Tensor& tensor);

}  // namespace ml
