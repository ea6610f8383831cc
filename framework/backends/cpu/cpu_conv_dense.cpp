// Convolution over planes of a few positions (the CNN's 3x3 maps) as one dense product.
//
// On an input plane of P_in positions and an output plane of P_out, a convolution is a linear map
// from an image's Cin*P_in values to its Cout*P_out outputs: the matrix
//     D[(co, p), (ci, q)] = w[co, ci, i, j]   where input position q lies at tap (i, j) of output
//                                             position p's window, and 0 where it lies outside,
// so that, with an NCHW batch being the rows of X [N, Cin*P_in] and of Y [N, Cout*P_out] as it is,
//     Y = X D^T + bias,   grad_X = grad_Y D,   grad_D = grad_Y^T X,
// and grad_w[co, ci, i, j] sums grad_D over the (p, q) at tap (i, j). Each is one GEMM as wide as
// the batch with no column matrix and no copies into or out of NCHW. D holds P_out*P_in entries per
// channel pair where im2col multiplies P_out*kh*kw, so it pays off while P_in <= kh*kw: a 3x3 map
// under a 3x3 kernel with padding 1 takes the same 81 (the padding's zeros included) in one well-shaped
// product, where im2col spent a fifth of its time gathering and scattering (issue 13).
#include <vector>

#include "framework/backends/cpu/cpu_conv.h"
#include "framework/backends/cpu/cpu_loops.h"
#include "framework/backends/dispatch.h"

namespace ml::cpu_conv {
namespace {
using namespace cpu_loops;

// A convolution's sizes (ConvShape) with those of D, and for each output position p the input
// positions q in its window with the tap (i * kw + j) each lies under, padding left out.
struct DenseShape : ConvShape {
  int64_t in_plane, kernel_area;
  struct Under {
    int64_t q, tap;
  };
  std::vector<std::vector<Under>> window;

  DenseShape(const Tensor& x, const Tensor& w, Conv2dParams params)
      : ConvShape(x, w, params), in_plane(height * width), kernel_area(kernel_h * kernel_w),
        window(static_cast<size_t>(plane())) {
    for (int64_t oh = 0; oh < out_h; ++oh)
      for (int64_t ow = 0; ow < out_w; ++ow)
        for (int64_t i = 0; i < kernel_h; ++i)
          for (int64_t j = 0; j < kernel_w; ++j) {
            const int64_t h = oh * p.stride_h - p.pad_h + i, v = ow * p.stride_w - p.pad_w + j;
            if (h >= 0 && h < height && v >= 0 && v < width)
              window[static_cast<size_t>(oh * out_w + ow)].push_back({h * width + v, i * kernel_w + j});
          }
  }
  int64_t rows() const { return output_size(); }  // of D: Cout * P_out
  int64_t cols() const { return image_size(); }   // Cin * P_in
};

// D from w [Cout, Cin, kh, kw]. Row (co, p) is zero but where p's window covers an input position:
// column (ci, q) then holds tap t of filter (co, ci), written for all ci at once (columns in_plane
// apart, taps kernel_area apart).
template <typename T>
Scratch<T> dense_matrix(const DenseShape& s, const T* pw) {
  auto d = scratch<T>(s.rows() * s.cols());
  T* pd = d.get();
  parallel_for(s.out_channels, s.rows() * s.cols() >= kParallelGrain, [&](int64_t co) {
    const T* filters = pw + co * s.in_channels * s.kernel_area;
    for (int64_t p = 0; p < s.plane(); ++p) {
      T* row = pd + (co * s.plane() + p) * s.cols();
      std::fill_n(row, s.cols(), T(0));
      for (const DenseShape::Under& u : s.window[static_cast<size_t>(p)])
        for (int64_t ci = 0; ci < s.in_channels; ++ci)
          row[ci * s.in_plane + u.q] = filters[ci * s.kernel_area + u.tap];
    }
  });
  return d;
}

template <typename T>
void forward(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& y, Conv2dParams params) {
  const DenseShape s(x, w, params);
  if (s.batch == 0) return;
  const auto d = dense_matrix<T>(s, w.data<T>());
  T* py = y.data<T>();
  T beta = T(0);
  if (bias.defined()) {  // Y starts as the bias, broadcast over positions, and the product adds into it
    const T* pb = bias.data<T>();
    for (int64_t n = 0; n < s.batch; ++n)
      for (int64_t co = 0; co < s.out_channels; ++co)
        std::fill_n(py + n * s.rows() + co * s.plane(), s.plane(), pb[co]);
    beta = T(1);
  }
  gemm<T>(false, true, s.batch, s.rows(), s.cols(), x.data<T>(), s.cols(), d.get(), s.cols(), beta, py, s.rows());
}

template <typename T>
void backward(const Tensor& grad_y, const Tensor& x, const Tensor& w, const Tensor& grad_x, const Tensor& grad_w,
              Conv2dParams params) {
  const DenseShape s(x, w, params);
  const T* pgy = grad_y.data<T>();
  if (grad_x.defined() && s.batch > 0) {
    const auto d = dense_matrix<T>(s, w.data<T>());
    gemm<T>(false, false, s.batch, s.cols(), s.rows(), pgy, s.rows(), d.get(), s.cols(), T(0), grad_x.data<T>(),
            s.cols());
  }
  if (!grad_w.defined()) return;
  T* pgw = grad_w.data<T>();
  if (s.batch == 0) {
    std::fill_n(pgw, grad_w.numel(), T(0));
    return;
  }
  const auto grad_d = scratch<T>(s.rows() * s.cols());
  const T* pgd = grad_d.get();
  gemm<T>(true, false, s.rows(), s.cols(), s.batch, pgy, s.rows(), x.data<T>(), s.cols(), T(0), grad_d.get(), s.cols());
  // grad_w[co, ci, t] = the sum of grad_D over the (p, q) under tap t, in the order of p.
  parallel_for(s.out_channels, s.rows() * s.cols() >= kParallelGrain, [&](int64_t co) {
    T* filters = pgw + co * s.in_channels * s.kernel_area;
    std::fill_n(filters, s.in_channels * s.kernel_area, T(0));
    for (int64_t p = 0; p < s.plane(); ++p) {
      const T* row = pgd + (co * s.plane() + p) * s.cols();
      for (const DenseShape::Under& u : s.window[static_cast<size_t>(p)])
        for (int64_t ci = 0; ci < s.in_channels; ++ci)
          filters[ci * s.kernel_area + u.tap] += row[ci * s.in_plane + u.q];
    }
  });
}

}  // namespace

bool dense_pays_off(const Tensor& x, const Tensor& w, Conv2dParams) {
  return x.size(2) * x.size(3) <= w.size(2) * w.size(3);
}

void dense_forward(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& y, Conv2dParams p) {
  dispatch_floating(x.dtype(), "conv2d", [&](auto tag) { forward<decltype(tag)>(x, w, bias, y, p); });
}

void dense_backward(const Tensor& grad_y, const Tensor& x, const Tensor& w, const Tensor& grad_x,
                    const Tensor& grad_w, const Tensor& grad_bias, Conv2dParams p) {
  if (grad_bias.defined()) bias_gradient(grad_y, grad_bias);
  dispatch_floating(x.dtype(), "conv2d_backward",
                    [&](auto tag) { backward<decltype(tag)>(grad_y, x, w, grad_x, grad_w, p); });
}

}  // namespace ml::cpu_conv
