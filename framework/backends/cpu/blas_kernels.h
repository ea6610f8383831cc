// Which kernels OpenBLAS runs. It chooses them once, when it is loaded, from the processor's model
// number; a release older than the processor does not know the model and falls back to its oldest
// x86-64 kernels (Prescott: SSE3), even on a processor with AVX-512. OpenBLAS 0.3.21 (Debian 12)
// did so on an Emerald Rapids VM (family 6, model 207): CIFAR training steps took 2.3 s instead
// of 0.84 s. On AMD processors that release runs AVX2 kernels (Haswell's, or Zen's) even where
// the processor has AVX-512 (Zen 4 and 5); later releases run SkylakeX's there
// (OpenMathLib/OpenBLAS#4303). On a Zen 5 EPYC VM (family 26) 0.3.21 chose Haswell's: SkylakeX's
// ran the Winograd products at 2.2x their speed (89 -> 197 GFLOP/s, one thread) and the GPT
// benchmark's step in 27.6 ms instead of 45. The choice can only be changed before the library
// loads, through OPENBLAS_CORETYPE, so the muonlab command restarts itself with it
// (experiments/main.cpp).
#pragma once
#include <string>

namespace ml {

// The kernel set OpenBLAS is using: "Haswell", "SkylakeX", "Zen", "Prescott", ...
std::string blas_kernel_name();

struct X86Features {
  bool avx2_fma = false;
  bool avx512 = false;  // AVX-512 F, CD, BW, DQ and VL: what OpenBLAS's SkylakeX kernels use
};
X86Features this_processor_features();

// The kernel set to ask OpenBLAS for instead of `current`: the best the processor's features allow
// when OpenBLAS fell back to Prescott's, SkylakeX's when it chose AVX2 kernels (Haswell, Zen) on
// a processor with AVX-512; empty when its choice stands (also when the user already set
// OPENBLAS_CORETYPE: `user_chose`).
std::string better_blas_kernels(const std::string& current, const X86Features& features, bool user_chose);

// better_blas_kernels for this process.
std::string blas_kernels_to_request();

}  // namespace ml
