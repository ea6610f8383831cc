#include "framework/backends/cpu/cpu_capability.h"

#include <atomic>
#include <cstdlib>
#include <stdexcept>

#include "framework/backends/cpu/blas_kernels.h"

namespace ml {
namespace {

// -1 until the first call chooses.
std::atomic<int> g_capability{-1};

CpuCapability checked(CpuCapability wanted, const std::string& asked_by) {
  if (wanted == CpuCapability::Avx512 && !avx512_loops_available())
    throw std::invalid_argument(asked_by + ": AVX-512 loops are not available (" +
                                (this_processor_features().avx512 ? "this build already runs AVX-512 code everywhere"
                                                                  : "this processor has no AVX-512") +
                                "); use default");
  return wanted;
}

}  // namespace

CpuCapability cpu_capability_for(const char* setting) {
  if (!setting) return avx512_loops_available() ? CpuCapability::Avx512 : CpuCapability::Default;
  const std::string text = setting;
  const std::string asked_by = "MUONLAB_CPU_CAPABILITY=" + text;
  if (text == "default") return CpuCapability::Default;
  if (text == "avx512") return checked(CpuCapability::Avx512, asked_by);
  throw std::invalid_argument(asked_by + ": expected default or avx512");
}

bool avx512_loops_available() {
#if defined(__x86_64__) && !defined(__AVX512F__)
  static const bool available = this_processor_features().avx512;
  return available;
#else
  return false;
#endif
}

CpuCapability cpu_capability() {
  int value = g_capability.load(std::memory_order_relaxed);
  if (value < 0) {
    value = static_cast<int>(cpu_capability_for(std::getenv("MUONLAB_CPU_CAPABILITY")));
    g_capability.store(value, std::memory_order_relaxed);
  }
  return static_cast<CpuCapability>(value);
}

void set_cpu_capability(CpuCapability capability) {
  g_capability.store(static_cast<int>(checked(capability, "set_cpu_capability")), std::memory_order_relaxed);
}

std::string cpu_capability_name() { return cpu_capability() == CpuCapability::Avx512 ? "avx512" : "default"; }

}  // namespace ml
