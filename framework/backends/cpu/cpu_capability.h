// Which vector instructions the CPU backend's arithmetic loops run. The project is built for one
// -march (x86-64-v3 by default: AVX2 + FMA) so that its binary runs on every machine of that
// level; on a processor that also has AVX-512, the loops whose cost is arithmetic per element
// (GELU, the exponentials of softmax and cross-entropy) run a second copy compiled for
// x86-64-v4, twice the lanes per instruction (cpu_loops.h: run_widest). Like PyTorch's
// ATEN_CPU_CAPABILITY, MUONLAB_CPU_CAPABILITY=default keeps the build's own code (for comparisons;
// =avx512 asks for the wider one and fails on a processor without it).
#pragma once
#include <string>

namespace ml {

enum class CpuCapability { Default, Avx512 };

// Chosen at the first call from MUONLAB_CPU_CAPABILITY (cpu_capability_for).
CpuCapability cpu_capability();
// The capability a value of MUONLAB_CPU_CAPABILITY asks for: nullptr (unset) gives AVX-512 where
// the processor has it (and the build does not already use it everywhere); an unknown value, or
// avx512 where it is not available, throws std::invalid_argument naming the variable.
CpuCapability cpu_capability_for(const char* setting);
// For tests and benchmarks: the same checks as the variable.
void set_cpu_capability(CpuCapability capability);
// Whether this binary has wider loops to switch to and the processor can run them.
bool avx512_loops_available();
// "avx512" or "default": for the host line of results.
std::string cpu_capability_name();

}  // namespace ml
