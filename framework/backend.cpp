#include "framework/backend.h"

#include <stdexcept>
#include <string>

#include "framework/backends/cpu/cpu_backend.h"
#ifdef MUONLAB_WITH_CUDA
#include "framework/backends/cuda/cuda_backend.h"
#include "framework/backends/cuda/cuda_runtime_probe.h"
#endif

namespace ml {

void Backend::unsupported(const char* kernel) const {
  throw std::runtime_error(std::string(name()) + " backend does not implement " + kernel);
}

bool cuda_available() {
#ifdef MUONLAB_WITH_CUDA
  return cuda_device_count() > 0;
#else
  return false;
#endif
}

Backend& backend_for(Device device) {
  if (device.is_cpu()) return cpu_backend();
#ifdef MUONLAB_WITH_CUDA
  if (!cuda_available()) throw std::runtime_error("device " + device.str() + " requested but no CUDA device is present");
  if (device.index != 0) throw std::runtime_error("only cuda:0 is supported, got " + device.str());
  return cuda_backend();
#else
  throw std::runtime_error("device " + device.str() + " requested but muonlab was built without CUDA");
#endif
}

}  // namespace ml
