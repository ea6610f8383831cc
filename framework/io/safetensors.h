// The safetensors format: an 8-byte little-endian header length N, N bytes of JSON header
// {"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}, then the
// raw little-endian data. F32, F64 and I64 tensors are supported.
#pragma once
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "framework/tensor.h"

namespace ml {

struct SafetensorsFile {
  std::string path;
  std::vector<std::pair<std::string, Tensor>> tensors;  // CPU tensors, in header order
  std::map<std::string, std::string> metadata;

  bool contains(const std::string& name) const;
  // Throws std::runtime_error naming the tensor and the file when it is missing.
  const Tensor& at(const std::string& name) const;
};

// Writes atomically (see write_file_atomic); tensors may be on any device and non-contiguous.
// Data is laid out in the given order. Throws on duplicate names or the reserved "__metadata__".
void save_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

// Validates everything (lengths, JSON, dtypes, shapes, offsets that must tile the data section
// without gaps or overlaps) and throws std::runtime_error naming the file and the tensor.
SafetensorsFile load_safetensors(const std::string& path);

}  // namespace ml
