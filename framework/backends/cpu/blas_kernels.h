// Which kernels OpenBLAS runs. It chooses them once, when it is loaded, from the processor's model
// number; a release older than the processor does not know the model and falls back to its oldest
// x86-64 kernels (Prescott: SSE3), even on a processor with AVX-512. OpenBLAS 0.3.21 (Debian 12)
// did so on an Emerald Rapids VM (family 6, model 207): CIFAR training steps took 2.3 s instead
// of 0.84 s. The choice can only be changed before the library loads, through OPENBLAS_CORETYPE,
// so the muonlab command restarts itself with it (experiments/main.cpp).
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

// The kernel set to ask OpenBLAS for instead of `current`: the one the processor's features
// allow when OpenBLAS fell back to Prescott's; empty when its choice stands (also when the user
// already set OPENBLAS_CORETYPE: `user_chose`).
std::string better_blas_kernels(const std::string& current, const X86Features& features, bool user_chose);

// better_blas_kernels for this process.
std::string blas_kernels_to_request();

}  // namespace ml
