// Element types and devices: the two tags every tensor carries.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace ml {

// Float64 exists on the CPU for precise gradient checks; Int64 holds indices and labels.
enum class DType : uint8_t { Float32, Float64, Int64 };

inline size_t dtype_size(DType t) { return t == DType::Float32 ? 4 : 8; }
inline bool is_floating(DType t) { return t != DType::Int64; }
const char* dtype_name(DType t);

enum class DeviceType : uint8_t { CPU, CUDA };

struct Device {
  DeviceType type = DeviceType::CPU;
  int index = 0;
  bool is_cpu() const { return type == DeviceType::CPU; }
  bool is_cuda() const { return type == DeviceType::CUDA; }
  bool operator==(const Device& o) const { return type == o.type && index == o.index; }
  bool operator!=(const Device& o) const { return !(*this == o); }
  std::string str() const;
  // Parses "cpu", "cuda" or "cuda:N"; throws on anything else.
  static Device parse(const std::string& s);
};

inline Device cpu() { return {DeviceType::CPU, 0}; }
inline Device cuda(int index = 0) { return {DeviceType::CUDA, index}; }

}  // namespace ml
