#include "experiments/host.h"

#include <fstream>
#include <thread>

#include "framework/backends/cpu/blas_kernels.h"
#include "framework/backends/cpu/cpu_capability.h"
#include "framework/backends/cpu/cpu_gemm.h"

namespace ml {

namespace {

std::string processor_name() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  for (std::string line; std::getline(cpuinfo, line);) {
    if (line.rfind("model name", 0) != 0) continue;
    const size_t colon = line.find(':');
    if (colon == std::string::npos) break;
    const size_t start = line.find_first_not_of(" \t", colon + 1);
    if (start != std::string::npos) return line.substr(start);
  }
  return "unknown processor";
}

}  // namespace

std::string host_description() {
  const unsigned cpus = std::thread::hardware_concurrency();
  return processor_name() + ", " + (cpus ? std::to_string(cpus) : std::string("unknown number of")) +
         " logical CPUs, OpenBLAS " + blas_kernel_name() + " kernels" +
         (cpu_capability() == CpuCapability::Avx512 ? ", AVX-512 loops" : "") +
         (cpu_gemm::own_sgemm_runs() ? ", own AVX-512 float32 products" : "");
}

}  // namespace ml
