// Convolution on the CPU: the im2col + GEMM path (cpu_conv.cpp), which runs every shape and is the
// reference; Winograd's F(4x4, 3x3) (cpu_winograd.cpp), which CpuBackend takes for the 3x3
// convolutions of stride 1 where it applies; a direct path for layers with few input channels
// (cpu_conv_direct.cpp: the CNN's stem); and a dense one for planes of a few positions
// (cpu_conv_dense.cpp: its 3x3 maps). All are exposed so that tests can hold them together; the
// helpers below are the pieces they share. Tensors are contiguous NCHW.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <type_traits>

#include "framework/backend.h"
#include "framework/backends/cpu/cpu_backend.h"
#include "framework/backends/cpu/cpu_gemm.h"
#include "framework/tensor.h"

namespace ml::cpu_conv {

void im2col_forward(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& y, Conv2dParams p);
void im2col_backward(const Tensor& grad_y, const Tensor& x, const Tensor& w, const Tensor& grad_x,
                     const Tensor& grad_w, const Tensor& grad_bias, Conv2dParams p);

// Whether Winograd's path runs this convolution: a 3x3 kernel, stride 1, padding of at most 2 on
// each side (the backward convolves grad_y with padding 2 - pad), float32 or float64.
bool winograd_applies(const Tensor& x, const Tensor& w, Conv2dParams p);
// Whether CpuBackend takes Winograd's path: where it applies and its products take at most 3.5
// multiply-adds per output (im2col: 9), counting the outputs computed past an output size that 4
// does not divide (3x3 outputs take 36 per 9).
bool winograd_pays_off(const Tensor& x, const Tensor& w, Conv2dParams p);
void winograd_forward(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& y, Conv2dParams p);
void winograd_backward(const Tensor& grad_y, const Tensor& x, const Tensor& w, const Tensor& grad_x,
                       const Tensor& grad_w, const Tensor& grad_bias, Conv2dParams p);

// The direct path for layers with few input channels (cpu_conv_direct.cpp): float32, stride 1, no
// padding, 16 to 32 outputs per row, any kernel.
bool direct_applies(const Tensor& x, const Tensor& w, Conv2dParams p);
// Whether CpuBackend takes it: where it applies, with at most 12 taps (Cin*kh*kw: the CNN's stem has
// 3*2*2), in the AVX-512 copy of the loops.
bool direct_pays_off(const Tensor& x, const Tensor& w, Conv2dParams p);
void direct_forward(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& y, Conv2dParams p);
// grad_x, where asked for, through the im2col path.
void direct_backward(const Tensor& grad_y, const Tensor& x, const Tensor& w, const Tensor& grad_x,
                     const Tensor& grad_w, const Tensor& grad_bias, Conv2dParams p);

// The dense path for planes of a few positions (cpu_conv_dense.cpp): the convolution as one product
// with a [Cout*P_out, Cin*P_in] matrix, any stride and padding. CpuBackend takes it where the input
// plane has at most kh*kw positions (the CNN's 3x3 maps under 3x3 kernels), where that matrix needs
// no more multiply-adds than im2col.
bool dense_pays_off(const Tensor& x, const Tensor& w, Conv2dParams p);
void dense_forward(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& y, Conv2dParams p);
void dense_backward(const Tensor& grad_y, const Tensor& x, const Tensor& w, const Tensor& grad_x,
                    const Tensor& grad_w, const Tensor& grad_bias, Conv2dParams p);

// ---- Shared by the paths

// grad_bias[co] = the sum of grad_y over the batch and plane of channel co (each plane summed in
// float lanes, the planes in double: cpu_loops::sum_in_lanes).
void bias_gradient(const Tensor& grad_y, const Tensor& grad_bias);

// The sizes of a convolution of x [N, Cin, H, W] by w [Cout, Cin, kh, kw].
struct ConvShape {
  int64_t batch, in_channels, height, width;
  int64_t out_channels, kernel_h, kernel_w;
  int64_t out_h, out_w;
  Conv2dParams p;

  ConvShape(const Tensor& x, const Tensor& w, Conv2dParams params)
      : batch(x.size(0)), in_channels(x.size(1)), height(x.size(2)), width(x.size(3)), out_channels(w.size(0)),
        kernel_h(w.size(2)), kernel_w(w.size(3)),
        out_h((height + 2 * params.pad_h - kernel_h) / params.stride_h + 1),
        out_w((width + 2 * params.pad_w - kernel_w) / params.stride_w + 1), p(params) {}
  int64_t patch() const { return in_channels * kernel_h * kernel_w; }  // taps of a window (im2col's rows)
  int64_t plane() const { return out_h * out_w; }
  int64_t image_size() const { return in_channels * height * width; }
  int64_t output_size() const { return out_channels * plane(); }
};

// c = op(a) @ op(b) + beta c, row-major (cpu_gemm::gemm); on the calling thread inside a parallel
// region, else on all threads.
template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b,
          int64_t ldb, T beta, T* c, int64_t ldc) {
  cpu_gemm::gemm(trans_a, trans_b, m, n, k, T(1), a, lda, b, ldb, beta, c, ldc);
}

// An uninitialized scratch buffer (the kernels overwrite every element they read), from the CPU
// backend's block cache: from new[], glibc gave the larger ones back to the kernel when they were
// freed and every call faulted their pages in again (Winograd's 64 -> 64 at 7x7, one thread: about
// 280 page faults a call, fwd+bwd 28.7 -> 21.5 ms without them).
struct ScratchRelease {
  size_t nbytes = 0;
  void operator()(void* ptr) const { cpu_host_release(ptr, nbytes); }
};
template <typename T>
using Scratch = std::unique_ptr<T[], ScratchRelease>;
template <typename T>
Scratch<T> scratch(int64_t n) {
  const size_t nbytes = static_cast<size_t>(std::max<int64_t>(n, 1)) * sizeof(T);
  return Scratch<T>(static_cast<T*>(cpu_host_allocate(nbytes)), ScratchRelease{nbytes});
}

// Copies a row of n values with fixed-size moves instead of a memcpy call, which costs more than
// the copy itself for the rows the convolutions copy (3 to 31 values, thousands of them per
// image): rows of at least a vector go in whole vectors, the last one overlapping the one before
// it; shorter rows in pieces of 4, 2 and 1 values. (A plain loop would be compiled into a memmove
// call.) Always inlined: as a call, GCC's choice, it cost the Winograd layers of the CNN 3-9% of
// their fwd+bwd (one and two threads), whose transforms copy every plane row by row.
template <typename T>
__attribute__((always_inline)) inline void copy_row(const T* in, int64_t n, T* out) {
  constexpr int64_t kVector = 32 / sizeof(T);  // one AVX register
  if (n >= kVector) {
    for (int64_t i = 0; i + kVector < n; i += kVector) std::memcpy(out + i, in + i, 32);
    std::memcpy(out + n - kVector, in + n - kVector, 32);
    return;
  }
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) std::memcpy(out + i, in + i, 4 * sizeof(T));
  if (i + 2 <= n) std::memcpy(out + i, in + i, 2 * sizeof(T)), i += 2;
  if (i < n) out[i] = in[i];
}

// How a batch is cut into groups of whole images, each one product, and the groups into parallel
// teams. Teams run their groups with their own buffers and single-threaded BLAS (the OpenMP build
// of OpenBLAS does not spawn threads inside an active parallel region); with fewer groups than
// threads (small batches) there is one team and BLAS uses all the threads inside each product.
struct ConvPlan {
  int64_t images_per_group = 1;
  int64_t groups = 0;
  int64_t teams = 1;
  int64_t group_begin(int64_t team) const { return groups * team / teams; }
  int64_t group_end(int64_t team) const { return groups * (team + 1) / teams; }
};

// Groups of about target_columns product columns, of which each image brings columns_per_image,
// for `threads` threads (a sum over the groups whose order must not follow the thread count plans
// for one).
inline ConvPlan plan_groups(int64_t batch, int64_t columns_per_image, int64_t target_columns,
                            int64_t threads = omp_get_max_threads()) {
  ConvPlan plan;
  if (batch == 0) return plan;
  threads = std::max<int64_t>(1, threads);
  const int64_t wanted = (batch * columns_per_image + target_columns - 1) / target_columns;
  // A multiple of the thread count balances the teams; never more groups than images.
  const int64_t groups = std::min(batch, std::max(threads, (wanted + threads - 1) / threads * threads));
  plan.images_per_group = (batch + groups - 1) / groups;
  plan.groups = (batch + plan.images_per_group - 1) / plan.images_per_group;
  plan.teams = plan.groups >= threads ? threads : 1;
  return plan;
}

}  // namespace ml::cpu_conv
