#include "framework/backends/cpu/blas_kernels.h"

#include <cblas.h>

#include <cstdlib>

namespace ml {

std::string blas_kernel_name() {
  const char* name = openblas_get_corename();
  return name ? name : "unknown";
}

X86Features this_processor_features() {
  X86Features features;
#if defined(__x86_64__)
  __builtin_cpu_init();
  features.avx2_fma = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  features.avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512cd") &&
                    __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
                    __builtin_cpu_supports("avx512vl");
#endif
  return features;
}

std::string better_blas_kernels(const std::string& current, const X86Features& features, bool user_chose) {
  // Only the unknown-model fallback is overruled: any other choice OpenBLAS made on purpose
  // (AMD's Zen kernels on an AVX-512 Zen 4, say).
  if (user_chose || current != "Prescott") return "";
  if (features.avx512) return "SkylakeX";
  if (features.avx2_fma) return "Haswell";
  return "";
}

std::string blas_kernels_to_request() {
  return better_blas_kernels(blas_kernel_name(), this_processor_features(), std::getenv("OPENBLAS_CORETYPE") != nullptr);
}

}  // namespace ml
