// Convolution, pooling and batch normalization on the CPU, each forward beside its backward.
// All tensors are contiguous NCHW (the ops guarantee it). Every result is computed in a fixed
// order for a given thread count, so runs are reproducible.
#include "framework/backends/cpu/cpu_conv.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

#include "framework/backends/cpu/cpu_backend.h"
#include "framework/backends/cpu/cpu_gemm_tile.h"
#include "framework/backends/cpu/cpu_loops.h"
#include "framework/backends/elementwise_math.h"

namespace ml {
using namespace cpu_loops;
using cpu_conv::ConvPlan;
using cpu_conv::ConvShape;
using cpu_conv::copy_row;
using cpu_conv::gemm;
using cpu_conv::Scratch;
using cpu_conv::scratch;

namespace {

// ===================================================================== convolution
//
// im2col + GEMM: the receptive fields of a group of images are unrolled into a column matrix
// col [Cin*kh*kw, G*Ho*Wo], so the convolution of the whole group is one product
// weight [Cout, Cin*kh*kw] @ col. Small feature maps (7x7, 3x3) are grouped so that BLAS still
// gets a wide product; large ones are convolved one image at a time (cpu_conv::plan_groups).
// This path runs every shape; CpuBackend takes Winograd's (cpu_winograd.cpp), the direct one
// (cpu_conv_direct.cpp) and the dense one (cpu_conv_dense.cpp) where they pay off.

// Columns (output positions of the group's images) per GEMM: enough for BLAS to run at full
// speed, few enough for the column buffer to stay in the L2 cache.
constexpr int64_t kTargetGemmColumns = 256;

ConvPlan plan_conv(const ConvShape& s) { return cpu_conv::plan_groups(s.batch, s.plane(), kTargetGemmColumns); }

// Unrolls images into column matrices (im2col) and folds column gradients back (col2im).
//
// Row (c, i, j) of col at output position (oh, ow) holds x[c, oh*stride_h - pad_h + i,
// ow*stride_w - pad_w + j], or 0 in the padding. Reading from a copy of the image inside a zero
// border turns every row into plain strided copies without bounds checks; the bounds-checked
// version spent more time in branches and short fills than the GEMM spent on 7x7 and 3x3 maps.

// out[i] += in[i] for a row of n values, in whole vectors and then pieces of 4, 2 and 1 values:
// col2im adds thousands of rows of 3 to 31 values per image, where the compiler's own vector loop
// spends more time on its alias checks and scalar remainder than on the additions.
template <typename T>
void add_row(const T* __restrict in, int64_t n, T* __restrict out) {
  constexpr int64_t kVector = 32 / sizeof(T);
  int64_t i = 0;
  for (; i + kVector <= n; i += kVector)
    for (int64_t k = 0; k < kVector; ++k) out[i + k] += in[i + k];
  for (int64_t piece = 4; piece >= 1; piece /= 2)
    if (i + piece <= n) {
      for (int64_t k = 0; k < piece; ++k) out[i + k] += in[i + k];
      i += piece;
    }
}

template <typename T>
class Unroller {
 public:
  explicit Unroller(const ConvShape& s)
      : s_(s), padded_h_(s.height + 2 * s.p.pad_h), padded_w_(s.width + 2 * s.p.pad_w),
        has_padding_(s.p.pad_h > 0 || s.p.pad_w > 0),
        padded_(scratch<T>(has_padding_ ? s.in_channels * padded_h_ * padded_w_ : 0)) {
    // The border stays zero: im2col only ever rewrites the interior.
    if (has_padding_) std::fill(padded_.get(), padded_.get() + s.in_channels * padded_h_ * padded_w_, T(0));
    if (tiny_plane())
      for (int64_t oh = 0; oh < s.out_h; ++oh)
        for (int64_t ow = 0; ow < s.out_w; ++ow) offsets_.push_back(oh * s.p.stride_h * padded_w_ + ow * s.p.stride_w);
  }

  // Writes the rows of one image into col (leading dimension ld).
  void im2col(const T* image, T* col, int64_t ld) {
    const T* source = image;
    if (has_padding_) {
      for (int64_t c = 0; c < s_.in_channels; ++c)
        for (int64_t h = 0; h < s_.height; ++h)
          copy_row(image + (c * s_.height + h) * s_.width, s_.width, interior(padded_.get(), c, h));
      source = padded_.get();
    }
    for (int64_t c = 0; c < s_.in_channels; ++c)
      for (int64_t i = 0; i < s_.kernel_h; ++i)
        for (int64_t j = 0; j < s_.kernel_w; ++j) {
          const T* window = source + (c * padded_h_ + i) * padded_w_ + j;
          T* row = col + ((c * s_.kernel_h + i) * s_.kernel_w + j) * ld;
          if (tiny_plane()) {
            for (int64_t k = 0; k < s_.plane(); ++k) row[k] = window[offsets_[k]];
            continue;
          }
          for (int64_t oh = 0; oh < s_.out_h; ++oh) {
            const T* in = window + oh * s_.p.stride_h * padded_w_;
            T* out = row + oh * s_.out_w;
            if (s_.p.stride_w != 1)
              for (int64_t ow = 0; ow < s_.out_w; ++ow) out[ow] = in[ow * s_.p.stride_w];
            else
              copy_row(in, s_.out_w, out);
          }
        }
  }

  // The adjoint of im2col: sums the rows back where they were read from and overwrites image.
  void col2im(const T* col, int64_t ld, T* image) {
    if (has_padding_ && !padded_grad_) padded_grad_ = scratch<T>(s_.in_channels * padded_h_ * padded_w_);
    T* target = has_padding_ ? padded_grad_.get() : image;
    std::fill(target, target + s_.in_channels * padded_h_ * padded_w_, T(0));
    // Channels innermost: the window of tap (i, j + 1) overlaps that of (i, j) one element to the
    // right, and adding into it while the previous tap's stores to the same rows are still in
    // flight stalls every load (a store-forwarding failure): on 7x7 planes this loop ran at a
    // fraction of its speed with c outermost. Each element still receives its taps in (i, j)
    // order, so the sums are the same.
    for (int64_t i = 0; i < s_.kernel_h; ++i)
      for (int64_t j = 0; j < s_.kernel_w; ++j)
        for (int64_t c = 0; c < s_.in_channels; ++c) {
          T* window = target + (c * padded_h_ + i) * padded_w_ + j;
          const T* row = col + ((c * s_.kernel_h + i) * s_.kernel_w + j) * ld;
          if (tiny_plane()) {
            for (int64_t k = 0; k < s_.plane(); ++k) window[offsets_[k]] += row[k];
            continue;
          }
          for (int64_t oh = 0; oh < s_.out_h; ++oh) {
            T* out = window + oh * s_.p.stride_h * padded_w_;
            const T* in = row + oh * s_.out_w;
            if (s_.p.stride_w == 1)
              add_row(in, s_.out_w, out);
            else
              for (int64_t ow = 0; ow < s_.out_w; ++ow) out[ow * s_.p.stride_w] += in[ow];
          }
        }
    if (!has_padding_) return;
    for (int64_t c = 0; c < s_.in_channels; ++c)
      for (int64_t h = 0; h < s_.height; ++h)
        copy_row(interior(padded_grad_.get(), c, h), s_.width, image + (c * s_.height + h) * s_.width);
  }

  // The images [first, first + count) of x as the B operand of a GEMM: their columns side by side,
  // unrolled into col unless the convolution is pointwise (1x1, stride 1, no padding) and the
  // group is one image, which then already is that matrix.
  const T* columns(const T* x, int64_t first, int64_t count, T* col) {
    const bool pointwise = s_.kernel_h == 1 && s_.kernel_w == 1 && s_.p.stride_h == 1 && s_.p.stride_w == 1 &&
                           !has_padding_;
    if (pointwise && count == 1) return x + first * s_.image_size();
    for (int64_t k = 0; k < count; ++k)
      im2col(x + (first + k) * s_.image_size(), col + k * s_.plane(), count * s_.plane());
    return col;
  }

 private:
  // Row h of channel c of the image inside a padded buffer.
  T* interior(T* padded, int64_t c, int64_t h) const {
    return padded + (c * padded_h_ + h + s_.p.pad_h) * padded_w_ + s_.p.pad_w;
  }

  // Output planes of a few positions (the CNN's 3x3 maps): a row of col is a gather through
  // offsets_ (each position's distance from its window's corner), one loop instead of a copy per
  // output row of 3 values.
  bool tiny_plane() const { return s_.plane() <= kTinyPlane; }
  static constexpr int64_t kTinyPlane = 16;

  const ConvShape& s_;
  const int64_t padded_h_, padded_w_;
  const bool has_padding_;
  Scratch<T> padded_;                 // the image being unrolled, inside a zero border
  Scratch<T> padded_grad_;            // col2im's sums, padding included (made on first use)
  std::vector<int64_t> offsets_;      // tiny planes: each output position's offset in its window
};

template <typename T>
void conv2d_forward(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& y, Conv2dParams params) {
  const ConvShape s(x, w, params);
  const ConvPlan plan = plan_conv(s);
  const T* px = x.data<T>();
  const T* pw = w.data<T>();
  const T* pb = bias.defined() ? bias.data<T>() : nullptr;
  T* py = y.data<T>();
  const int64_t G = plan.images_per_group;
  parallel_for(plan.teams, plan.teams > 1, [&](int64_t team) {
    Unroller<T> unroller(s);
    auto col = scratch<T>(s.patch() * G * s.plane());
    // A group of several images gets its product [Cout, G*Ho*Wo] here, then is scattered into NCHW.
    auto product = scratch<T>(G > 1 ? s.out_channels * G * s.plane() : 0);
    for (int64_t g = plan.group_begin(team); g < plan.group_end(team); ++g) {
      const int64_t first = g * G, count = std::min(G, s.batch - first), cols = count * s.plane();
      const T* b = unroller.columns(px, first, count, col.get());
      T* c = count == 1 ? py + first * s.output_size() : product.get();
      gemm<T>(false, false, s.out_channels, cols, s.patch(), pw, s.patch(), b, cols, T(0), c, cols);
      if (count == 1 && !pb) continue;  // the product already is the output
      for (int64_t k = 0; k < count; ++k)
        for (int64_t co = 0; co < s.out_channels; ++co) {
          const T* src = c + co * cols + k * s.plane();
          T* dst = py + (first + k) * s.output_size() + co * s.plane();
          const T shift = pb ? pb[co] : T(0);
          for (int64_t i = 0; i < s.plane(); ++i) dst[i] = src[i] + shift;
        }
    }
  });
}

template <typename T>
void bias_gradient_impl(const Tensor& grad_y, const Tensor& grad_bias) {
  const int64_t batch = grad_y.size(0), channels = grad_y.size(1), plane = grad_y.size(2) * grad_y.size(3);
  const T* pgy = grad_y.data<T>();
  T* pgb = grad_bias.data<T>();
  parallel_for(channels, grad_y.numel() >= kParallelGrain, [&](int64_t co) {
    double acc = 0.0;
    for (int64_t n = 0; n < batch; ++n) {
      const T* src = pgy + (n * channels + co) * plane;
      acc += sum_in_lanes<T>(plane, [src](int64_t i) { return src[i]; });
    }
    pgb[co] = static_cast<T>(acc);
  });
}

template <typename T>
void conv2d_backward_impl(const Tensor& grad_y, const Tensor& x, const Tensor& w, const Tensor& grad_x,
                          const Tensor& grad_w, const Tensor& grad_bias, Conv2dParams params) {
  const ConvShape s(x, w, params);
  const T* pgy = grad_y.data<T>();
  if (grad_bias.defined()) bias_gradient_impl<T>(grad_y, grad_bias);
  if (!grad_x.defined() && !grad_w.defined()) return;

  const ConvPlan plan = plan_conv(s);
  const T* px = x.data<T>();
  const T* pw = w.data<T>();
  T* pgx = grad_x.defined() ? grad_x.data<T>() : nullptr;
  const int64_t G = plan.images_per_group, weight_size = s.out_channels * s.patch();
  // Each team sums its images' weight gradient into its own partial; the partials are added in
  // team order afterwards, so the result does not depend on scheduling. A partial holds the
  // gradient transposed, [Cin*kh*kw, Cout]: OpenBLAS computes col @ grad_y^T 10-40% faster than
  // grad_y @ col^T when Cout is small (32, 64), the transpose is undone in the final sum.
  std::vector<Scratch<T>> partial_grad_w(plan.teams);
  parallel_for(plan.teams, plan.teams > 1, [&](int64_t team) {
    Unroller<T> unroller(s);
    auto col = scratch<T>(s.patch() * G * s.plane());
    auto grad_y_group = scratch<T>(G > 1 ? s.out_channels * G * s.plane() : 0);
    T* partial = nullptr;
    if (grad_w.defined()) {
      partial_grad_w[team] = scratch<T>(weight_size);
      partial = partial_grad_w[team].get();
      std::fill(partial, partial + weight_size, T(0));
    }
    for (int64_t g = plan.group_begin(team); g < plan.group_end(team); ++g) {
      const int64_t first = g * G, count = std::min(G, s.batch - first), cols = count * s.plane();
      // grad_y of the group as one [Cout, G*Ho*Wo] matrix, the layout of the forward product.
      const T* gy = pgy + first * s.output_size();
      if (count > 1) {
        for (int64_t k = 0; k < count; ++k)
          for (int64_t co = 0; co < s.out_channels; ++co)
            copy_row(gy + k * s.output_size() + co * s.plane(), s.plane(),
                     grad_y_group.get() + co * cols + k * s.plane());
        gy = grad_y_group.get();
      }
      if (partial) {  // grad_w^T += col @ grad_y^T
        const T* b = unroller.columns(px, first, count, col.get());
        gemm<T>(false, true, s.patch(), s.out_channels, cols, b, cols, gy, cols, T(1), partial, s.out_channels);
      }
      if (pgx) {  // grad_col = w^T @ grad_y, folded back into the images
        gemm<T>(true, false, s.patch(), cols, s.out_channels, pw, s.patch(), gy, cols, T(0), col.get(), cols);
        for (int64_t k = 0; k < count; ++k)
          unroller.col2im(col.get() + k * s.plane(), cols, pgx + (first + k) * s.image_size());
      }
    }
  });
  if (grad_w.defined()) {
    T* pgw = grad_w.data<T>();
    for (int64_t co = 0; co < s.out_channels; ++co)
      for (int64_t k = 0; k < s.patch(); ++k) {
        T sum = partial_grad_w[0][k * s.out_channels + co];
        for (int64_t team = 1; team < plan.teams; ++team) sum += partial_grad_w[team][k * s.out_channels + co];
        pgw[co * s.patch() + k] = sum;
      }
  }
}

// ===================================================================== pooling
// One (image, channel) plane per iteration; windows are clipped to the input (padding positions
// never win a max and count as zeros in an average).

struct PoolShape {
  int64_t planes, height, width, out_h, out_w;
  PoolShape(const Tensor& x, const Tensor& y)
      : planes(x.size(0) * x.size(1)), height(x.size(2)), width(x.size(3)), out_h(y.size(2)), out_w(y.size(3)) {}
  int64_t in_plane() const { return height * width; }
  int64_t out_plane() const { return out_h * out_w; }
};

// The input rows (or columns) [begin, end) covered by window o.
std::pair<int64_t, int64_t> window(int64_t o, int64_t stride, int64_t pad, int64_t kernel, int64_t size) {
  const int64_t start = o * stride - pad;
  return {std::max<int64_t>(start, 0), std::min(start + kernel, size)};
}

// take ? a : b without a branch. On real data the comparisons of a max pool are coin flips, and
// compilers turn a select of floats into a branch that then mispredicts half the time (the loop
// ran several times slower); selecting the bits with a mask keeps it branch-free.
template <typename T>
T select(bool take, T a, T b) {
  using Bits = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  Bits bits_a, bits_b;
  std::memcpy(&bits_a, &a, sizeof(T));
  std::memcpy(&bits_b, &b, sizeof(T));
  const Bits mask = Bits(0) - static_cast<Bits>(take);
  const Bits bits = (bits_a & mask) | (bits_b & ~mask);
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}

// One output row of the 2x2, stride-2 max pool: y_row[ow] and index_row[ow] from the window at
// columns 2 ow, 2 ow + 1 of the input rows `upper` and `lower` = upper + width; `top` is upper's
// offset in its plane, which the indices count from. The readable reference: the window's first
// value, then the three others in order, each taken if larger or NaN (the first of tied maxima
// and the last NaN win, as a window-by-window reading gives).
template <typename T>
void max_pool_2x2_row(const T* upper, int64_t width, int64_t top, int64_t out_w, T* y_row, int64_t* index_row) {
  const T* lower = upper + width;
  // select() rather than ?: for the value: the loop's vector part becomes blends either way,
  // but its scalar remainder (7 of the 15 outputs of a row, all of a 7 or 3 wide row) was
  // compiled into branches that real data mispredicts: about 55 cycles per output.
  for (int64_t ow = 0; ow < out_w; ++ow) {
    T best = upper[2 * ow];
    int64_t best_at = top + 2 * ow;
    const T candidates[3] = {upper[2 * ow + 1], lower[2 * ow], lower[2 * ow + 1]};
    const int64_t offsets[3] = {top + 2 * ow + 1, top + width + 2 * ow, top + width + 2 * ow + 1};
    for (int k = 0; k < 3; ++k) {
      const bool take = (candidates[k] > best) | (candidates[k] != candidates[k]);  // NaN propagates
      best = select(take, candidates[k], best);
      best_at = take ? offsets[k] : best_at;
    }
    y_row[ow] = best;
    index_row[ow] = best_at;
  }
}

#if MUONLAB_OWN_SGEMM
// max_pool_2x2_row for float32 in AVX-512, 16 outputs at a time: the 32 input columns of each row
// split into even and odd columns by two permutes, the same comparisons lane by lane, and masked
// stores of the last, shorter run of outputs. The reference's loop took about 30 cycles per output
// (each comparison waiting on the last), and rows of 3 outputs are all remainder: the CNN's three
// pools' forward, one thread, 3.4 + 2.5 + 3.1 ms -> 2.3-2.7 + 1.3-1.5 + 0.9 ms. The loads read
// 32 columns whole, past the row's end (lanes whose results are not stored), wherever that stays
// before `readable_end`: masked loads instead made it 2-3x slower than the reference.
__attribute__((target("arch=x86-64-v4"))) void max_pool_2x2_row_avx512(const float* upper, int64_t width, int64_t top,
                                                                       int64_t out_w, const float* readable_end,
                                                                       float* y_row, int64_t* index_row) {
  const float* lower = upper + width;
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  const __m512i first_columns = _mm512_setr_epi64(0, 2, 4, 6, 8, 10, 12, 14);  // of outputs 0-7; 8-15: + 16
  const __m512i offsets[3] = {_mm512_set1_epi64(1), _mm512_set1_epi64(width), _mm512_set1_epi64(width + 1)};
  for (int64_t first = 0; first < out_w; first += 16) {
    const int64_t outputs = std::min<int64_t>(16, out_w - first);
    const __mmask16 low = cpu_gemm::lanes_below(2 * outputs), high = cpu_gemm::lanes_below(2 * outputs - 16);
    const float* up = upper + 2 * first;
    const float* down = lower + 2 * first;
    const bool whole = readable_end - down >= 32;  // and so from up, a row earlier
    const __m512 up0 = whole ? _mm512_loadu_ps(up) : _mm512_maskz_loadu_ps(low, up);
    const __m512 up1 = whole ? _mm512_loadu_ps(up + 16) : _mm512_maskz_loadu_ps(high, up + 16);
    const __m512 down0 = whole ? _mm512_loadu_ps(down) : _mm512_maskz_loadu_ps(low, down);
    const __m512 down1 = whole ? _mm512_loadu_ps(down + 16) : _mm512_maskz_loadu_ps(high, down + 16);
    const __m512 candidates[3] = {_mm512_permutex2var_ps(up0, odd, up1), _mm512_permutex2var_ps(down0, even, down1),
                                  _mm512_permutex2var_ps(down0, odd, down1)};
    // The windows' first positions, outputs 0-7 and 8-15, as int64 like the indices.
    const __m512i starts[2] = {_mm512_add_epi64(first_columns, _mm512_set1_epi64(top + 2 * first)),
                               _mm512_add_epi64(first_columns, _mm512_set1_epi64(top + 2 * first + 16))};
    __m512 best = _mm512_permutex2var_ps(up0, even, up1);
    __m512i best_at[2] = {starts[0], starts[1]};
    for (int k = 0; k < 3; ++k) {
      const __mmask16 take = _mm512_cmp_ps_mask(candidates[k], best, _CMP_GT_OQ) |
                             _mm512_cmp_ps_mask(candidates[k], candidates[k], _CMP_UNORD_Q);
      best = _mm512_mask_blend_ps(take, best, candidates[k]);
      for (int half = 0; half < 2; ++half)
        best_at[half] =
            _mm512_mask_add_epi64(best_at[half], static_cast<__mmask8>(take >> (8 * half)), starts[half], offsets[k]);
    }
    const __mmask16 live = cpu_gemm::lanes_below(outputs);
    _mm512_mask_storeu_ps(y_row + first, live, best);
    for (int half = 0; half < 2; ++half)
      _mm512_mask_storeu_epi64(index_row + first + 8 * half, static_cast<__mmask8>(live >> (8 * half)), best_at[half]);
  }
}
#endif

template <typename T>
void max_pool2d_forward(const Tensor& x, const Tensor& y, const Tensor& indices, Pool2dParams p) {
  const PoolShape s(x, y);
  const T* px = x.data<T>();
  T* py = y.data<T>();
  int64_t* pi = indices.data<int64_t>();
  // The CNN's 2x2 windows at stride 2 lie inside the image: a loop without per-window bounds.
  const bool two_by_two = p.kernel_h == 2 && p.kernel_w == 2 && p.stride_h == 2 && p.stride_w == 2 && p.pad_h == 0 &&
                          p.pad_w == 0;
  [[maybe_unused]] const bool avx512 = std::is_same_v<T, float> && widest_is_avx512();
  parallel_for(s.planes, s.planes * s.in_plane() >= kParallelGrain, [&](int64_t plane) {
    const T* in = px + plane * s.in_plane();
    if (two_by_two) {
      for (int64_t oh = 0; oh < s.out_h; ++oh) {
        const int64_t top = 2 * oh * s.width, o = plane * s.out_plane() + oh * s.out_w;
#if MUONLAB_OWN_SGEMM
        if constexpr (std::is_same_v<T, float>)
          if (avx512) {
            max_pool_2x2_row_avx512(in + top, s.width, top, s.out_w, px + s.planes * s.in_plane(), py + o, pi + o);
            continue;
          }
#endif
        max_pool_2x2_row(in + top, s.width, top, s.out_w, py + o, pi + o);
      }
      return;
    }
    for (int64_t oh = 0; oh < s.out_h; ++oh) {
      const auto [h0, h1] = window(oh, p.stride_h, p.pad_h, p.kernel_h, s.height);
      for (int64_t ow = 0; ow < s.out_w; ++ow) {
        const auto [w0, w1] = window(ow, p.stride_w, p.pad_w, p.kernel_w, s.width);
        T best = -std::numeric_limits<T>::infinity();
        int64_t best_at = h0 * s.width + w0;
        for (int64_t ih = h0; ih < h1; ++ih)
          for (int64_t iw = w0; iw < w1; ++iw) {
            const T v = in[ih * s.width + iw];
            const bool take = (v > best) | (v != v);  // NaN propagates, as in PyTorch
            best = select(take, v, best);
            best_at = take ? ih * s.width + iw : best_at;
          }
        const int64_t o = plane * s.out_plane() + oh * s.out_w + ow;
        py[o] = best;
        pi[o] = best_at;
      }
    }
  });
}

template <typename T>
void max_pool2d_backward_impl(const Tensor& grad_y, const Tensor& indices, const Tensor& grad_x) {
  const PoolShape s(grad_x, grad_y);
  const T* pgy = grad_y.data<T>();
  const int64_t* pi = indices.data<int64_t>();
  T* pgx = grad_x.data<T>();
  parallel_for(s.planes, s.planes * s.in_plane() >= kParallelGrain, [&](int64_t plane) {
    T* out = pgx + plane * s.in_plane();
    std::fill(out, out + s.in_plane(), T(0));
    for (int64_t o = plane * s.out_plane(); o < (plane + 1) * s.out_plane(); ++o) out[pi[o]] += pgy[o];
  });
}

template <typename T>
void avg_pool2d_forward(const Tensor& x, const Tensor& y, Pool2dParams p) {
  const PoolShape s(x, y);
  const T* px = x.data<T>();
  T* py = y.data<T>();
  const double scale = 1.0 / static_cast<double>(p.kernel_h * p.kernel_w);
  parallel_for(s.planes, s.planes * s.in_plane() >= kParallelGrain, [&](int64_t plane) {
    const T* in = px + plane * s.in_plane();
    for (int64_t oh = 0; oh < s.out_h; ++oh) {
      const auto [h0, h1] = window(oh, p.stride_h, p.pad_h, p.kernel_h, s.height);
      for (int64_t ow = 0; ow < s.out_w; ++ow) {
        const auto [w0, w1] = window(ow, p.stride_w, p.pad_w, p.kernel_w, s.width);
        double acc = 0.0;
        for (int64_t ih = h0; ih < h1; ++ih)
          for (int64_t iw = w0; iw < w1; ++iw) acc += static_cast<double>(in[ih * s.width + iw]);
        py[plane * s.out_plane() + oh * s.out_w + ow] = static_cast<T>(acc * scale);
      }
    }
  });
}

template <typename T>
void avg_pool2d_backward_impl(const Tensor& grad_y, const Tensor& grad_x, Pool2dParams p) {
  const PoolShape s(grad_x, grad_y);
  const T* pgy = grad_y.data<T>();
  T* pgx = grad_x.data<T>();
  const T scale = static_cast<T>(1.0 / static_cast<double>(p.kernel_h * p.kernel_w));
  parallel_for(s.planes, s.planes * s.in_plane() >= kParallelGrain, [&](int64_t plane) {
    T* out = pgx + plane * s.in_plane();
    std::fill(out, out + s.in_plane(), T(0));
    for (int64_t oh = 0; oh < s.out_h; ++oh) {
      const auto [h0, h1] = window(oh, p.stride_h, p.pad_h, p.kernel_h, s.height);
      for (int64_t ow = 0; ow < s.out_w; ++ow) {
        const auto [w0, w1] = window(ow, p.stride_w, p.pad_w, p.kernel_w, s.width);
        const T g = pgy[plane * s.out_plane() + oh * s.out_w + ow] * scale;
        for (int64_t ih = h0; ih < h1; ++ih)
          for (int64_t iw = w0; iw < w1; ++iw) out[ih * s.width + iw] += g;
      }
    }
  });
}

// ===================================================================== batch normalization
// Channel c of x [N,C,H,W] is N runs of H*W values, too short for vector code on small images (9
// values at 3x3: the CNN's last group). So the kernels take the channels in blocks: in one image a
// block's runs are one contiguous segment, and each per-channel value (mean, scale, ...) is spread
// over the segment's positions; a sum over a channel adds position by position across the images
// (vector adds), then over the channel's positions. A block holds at least kSegment values per
// image, so its values for the CNN's batch of 256 stay in L2 for a second pass.

class ChannelBlocks {
 public:
  static constexpr int64_t kSegment = 256;

  ChannelBlocks(const Tensor& x, bool parallel)
      : batch_(x.size(0)), channels_(x.size(1)), plane_(x.size(2) * x.size(3)) {
    const int64_t least_channels = std::max<int64_t>(1, (kSegment + plane_ - 1) / std::max<int64_t>(1, plane_));
    blocks_ = std::max<int64_t>(1, channels_ / least_channels);
    // As many blocks on every thread, where there are more blocks than threads.
    const int64_t threads = use_threads(parallel) ? omp_get_max_threads() : 1;
    if (blocks_ > threads) blocks_ -= blocks_ % threads;
  }
  int64_t blocks() const { return blocks_; }
  int64_t plane() const { return plane_; }
  int64_t count() const { return batch_ * plane_; }  // values per channel
  int64_t first_channel(int64_t block) const { return block * channels_ / blocks_; }
  int64_t end_channel(int64_t block) const { return (block + 1) * channels_ / blocks_; }
  // The offset of image n's segment of the block starting at channel c0.
  int64_t segment(int64_t n, int64_t c0) const { return (n * channels_ + c0) * plane_; }
  int64_t batch() const { return batch_; }

 private:
  int64_t batch_, channels_, plane_, blocks_ = 1;
};

// Asks for the lines of a segment the next iteration reads: one image's segments lie a whole image
// apart, a stride the hardware prefetchers do not follow across pages.
template <typename T>
void prefetch_segment(const T* segment, int64_t length) {
  const char* bytes = reinterpret_cast<const char*>(segment);
  for (int64_t offset = 0; offset < length * static_cast<int64_t>(sizeof(T)); offset += 64)
    __builtin_prefetch(bytes + offset);
}

// sums[k][j] += term_k(n, j) over the images n < images and positions j < length of a block's
// segments, where terms(n, j, t) sets t[k] = term_k(n, j) and prepare(n) runs before image n's terms
// are read. Four images per pass over the sums: one image per pass spent more on loading and storing
// the double sums than on the terms (a block of 450 values per image, 10-15% slower than a channel's
// sums in registers).
constexpr int64_t kImagesPerPass = 4;
template <size_t K, typename Prepare, typename Terms>
void add_over_images(int64_t images, int64_t length, const std::array<double*, K>& sums, Prepare&& prepare,
                     Terms&& terms) {
  const auto add_images = [&](int64_t n0, auto count) {
    for (int64_t q = 0; q < count; ++q) prepare(n0 + q);
#pragma omp simd
    for (int64_t j = 0; j < length; ++j) {
      double total[K];
      for (size_t k = 0; k < K; ++k) total[k] = sums[k][j];
      for (int64_t q = 0; q < count; ++q) {
        double t[K];
        terms(n0 + q, j, t);
        for (size_t k = 0; k < K; ++k) total[k] += t[k];
      }
      for (size_t k = 0; k < K; ++k) sums[k][j] = total[k];
    }
  };
  int64_t n = 0;
  for (; n + kImagesPerPass <= images; n += kImagesPerPass)
    add_images(n, std::integral_constant<int64_t, kImagesPerPass>{});
  for (; n < images; ++n) add_images(n, std::integral_constant<int64_t, 1>{});
}

// Per-channel values for the positions of a block's segment: at[(c - c0) * plane + i] = value(c).
template <typename V, typename Value>
std::vector<V> spread_over_segment(int64_t c0, int64_t c1, int64_t plane, Value&& value) {
  std::vector<V> at((c1 - c0) * plane);
  for (int64_t c = c0; c < c1; ++c) std::fill_n(at.begin() + (c - c0) * plane, plane, static_cast<V>(value(c)));
  return at;
}

// The sum over channel c's positions of per-position sums (a block's segment).
double channel_total(const std::vector<double>& position_sums, int64_t c_in_block, int64_t plane) {
  double total = 0.0;
  for (int64_t i = 0; i < plane; ++i) total += position_sums[c_in_block * plane + i];
  return total;
}

template <typename T>
void batch_norm_stats_impl(const Tensor& x, const Tensor& mean, const Tensor& var) {
  if (x.numel() == 0) return;
  const ChannelBlocks L(x, x.numel() >= kParallelGrain);
  const T* px = x.data<T>();
  T* pm = mean.data<T>();
  T* pv = var.data<T>();
  // Two passes (mean, then squared deviations) avoid the cancellation of E[x^2] - E[x]^2.
  parallel_for_widest(L.blocks(), x.numel() >= kParallelGrain, [&](int64_t block) {
    const int64_t c0 = L.first_channel(block), c1 = L.end_channel(block), length = (c1 - c0) * L.plane();
    std::vector<double> sums(length);
    const auto prefetch = [&](int64_t n) {  // the same image of the next pass
      if (n + kImagesPerPass < L.batch()) prefetch_segment(px + L.segment(n + kImagesPerPass, c0), length);
    };
    add_over_images<1>(L.batch(), length, {sums.data()}, prefetch, [&](int64_t n, int64_t j, double(&t)[1]) {
      t[0] = static_cast<double>(px[L.segment(n, c0) + j]);
    });
    const std::vector<double> mean_at = spread_over_segment<double>(c0, c1, L.plane(), [&](int64_t c) {
      return channel_total(sums, c - c0, L.plane()) / static_cast<double>(L.count());
    });
    std::fill(sums.begin(), sums.end(), 0.0);
    add_over_images<1>(
        L.batch(), length, {sums.data()}, [](int64_t) {},
        [&](int64_t n, int64_t j, double(&t)[1]) {
          const double d = static_cast<double>(px[L.segment(n, c0) + j]) - mean_at[j];
          t[0] = d * d;
        });
    for (int64_t c = c0; c < c1; ++c) {
      pm[c] = static_cast<T>(mean_at[(c - c0) * L.plane()]);
      pv[c] = static_cast<T>(channel_total(sums, c - c0, L.plane()) / static_cast<double>(L.count()));
    }
  });
}

// What a batch-norm kernel applies to the normalized value: nothing, or an activation whose op is a
// compile-time constant where with_constant_op makes it one (so that the loops vectorize).
struct NoActivation {
  static constexpr bool kFused = false;
  template <typename T>
  T value(T normalized) const {
    return normalized;
  }
};
template <typename Op>
struct FusedActivation {
  static constexpr bool kFused = true;
  Op op;
  template <typename T>
  T value(T normalized) const {
    return elementwise::unary_forward(UnaryOp(op), normalized, T(0), T(0));
  }
  template <typename T>
  T derivative(T normalized) const {
    return elementwise::activation_derivative(UnaryOp(op), normalized);
  }
};

template <typename Body>
void with_activation(std::optional<UnaryOp> activation, Body&& body) {
  if (!activation) return body(NoActivation{});
  elementwise::with_constant_op(*activation, [&](auto op) { body(FusedActivation<decltype(op)>{op}); });
}

// normalized = (x - mean) * scale + shift with scale = invstd * weight and shift = bias, spread over
// a block's segment. Centering before scaling keeps float32 accurate when the mean is large against
// the spread.
template <typename T>
struct SegmentAffine {
  std::vector<T> mean, scale, shift;
  SegmentAffine(const ChannelBlocks& L, int64_t c0, int64_t c1, const Tensor& mean_t, const Tensor& invstd,
                const Tensor& weight, const Tensor& bias)
      : mean(spread_over_segment<T>(c0, c1, L.plane(), [&](int64_t c) { return mean_t.data<T>()[c]; })),
        scale(spread_over_segment<T>(
            c0, c1, L.plane(),
            [&](int64_t c) { return invstd.data<T>()[c] * (weight.defined() ? weight.data<T>()[c] : T(1)); })),
        shift(spread_over_segment<T>(c0, c1, L.plane(),
                                     [&](int64_t c) { return bias.defined() ? bias.data<T>()[c] : T(0); })) {}
};

// y = activation(normalized).
template <typename T, typename Activation>
void batch_norm_apply_impl(const Tensor& x, const Tensor& mean, const Tensor& invstd, const Tensor& weight,
                           const Tensor& bias, Activation activation, const Tensor& y) {
  if (x.numel() == 0) return;
  const ChannelBlocks L(x, x.numel() >= kParallelGrain);
  const T* px = x.data<T>();
  T* py = y.data<T>();
  parallel_for_widest(L.blocks(), x.numel() >= kParallelGrain, [&](int64_t block) {
    const int64_t c0 = L.first_channel(block), c1 = L.end_channel(block), length = (c1 - c0) * L.plane();
    const SegmentAffine<T> affine(L, c0, c1, mean, invstd, weight, bias);
    const T *m = affine.mean.data(), *a = affine.scale.data(), *b = affine.shift.data();
    for (int64_t n = 0; n < L.batch(); ++n) {
      const T* in = px + L.segment(n, c0);
      T* out = py + L.segment(n, c0);
      if (n + 1 < L.batch()) prefetch_segment(px + L.segment(n + 1, c0), length);
#pragma omp simd
      for (int64_t j = 0; j < length; ++j) out[j] = activation.value((in[j] - m[j]) * a[j] + b[j]);
    }
  });
}

// With g the gradient reaching the normalized value (grad_y, or grad_y * activation'(normalized)),
// xhat = (x - mean) * invstd and M values per channel:
//   grad_bias = sum(g), grad_weight = sum(g * xhat),
//   grad_x = weight * invstd * (g - grad_bias / M - xhat * grad_weight / M).
// A block's first pass sums (and, with an activation, leaves g in grad_x); its second pass reads
// the block's values again while they are in cache.
template <typename T, typename Activation>
void batch_norm_backward_impl(const Tensor& grad_y, const Tensor& x, const Tensor& mean, const Tensor& invstd,
                              const Tensor& weight, const Tensor& bias, Activation activation, const Tensor& grad_x,
                              const Tensor& grad_weight, const Tensor& grad_bias) {
  if (x.numel() == 0) return;
  const ChannelBlocks L(x, x.numel() >= kParallelGrain);
  const T* pgy = grad_y.data<T>();
  const T* px = x.data<T>();
  const T* ps = invstd.data<T>();
  const T* pw = weight.defined() ? weight.data<T>() : nullptr;
  T* pgx = grad_x.defined() ? grad_x.data<T>() : nullptr;
  T* pgw = grad_weight.defined() ? grad_weight.data<T>() : nullptr;
  T* pgb = grad_bias.defined() ? grad_bias.data<T>() : nullptr;
  const double inv_count = 1.0 / static_cast<double>(L.count());
  parallel_for_widest(L.blocks(), x.numel() >= kParallelGrain, [&](int64_t block) {
    const int64_t c0 = L.first_channel(block), c1 = L.end_channel(block), length = (c1 - c0) * L.plane();
    const SegmentAffine<T> affine(L, c0, c1, mean, invstd, weight, bias);
    const T *m = affine.mean.data(), *scale = affine.scale.data(), *shift = affine.shift.data();
    std::vector<double> sums_g(length), sums_g_centered(length);
    // With an activation, g goes to grad_x (or, where grad_x is not wanted, to scratch for one pass).
    std::vector<T> g_scratch(Activation::kFused && !pgx ? kImagesPerPass * length : 0);
    std::array<const T*, kImagesPerPass> g_of{};  // image n's g at g_of[n % kImagesPerPass]
    const auto prepare = [&](int64_t n) {
      const int64_t slot = n % kImagesPerPass;
      if (n + kImagesPerPass < L.batch()) {
        prefetch_segment(pgy + L.segment(n + kImagesPerPass, c0), length);
        prefetch_segment(px + L.segment(n + kImagesPerPass, c0), length);
      }
      const T* gy = pgy + L.segment(n, c0);
      g_of[slot] = gy;
      if constexpr (Activation::kFused) {
        const T* in = px + L.segment(n, c0);
        T* g = pgx ? pgx + L.segment(n, c0) : g_scratch.data() + slot * length;
#pragma omp simd
        for (int64_t j = 0; j < length; ++j) g[j] = gy[j] * activation.derivative((in[j] - m[j]) * scale[j] + shift[j]);
        g_of[slot] = g;
      }
    };
    add_over_images<2>(L.batch(), length, {sums_g.data(), sums_g_centered.data()}, prepare,
                       [&](int64_t n, int64_t j, double(&t)[2]) {
                         const double g = static_cast<double>(g_of[n % kImagesPerPass][j]);
                         t[0] = g;
                         t[1] = g * (static_cast<double>(px[L.segment(n, c0) + j]) - static_cast<double>(m[j]));
                       });
    // grad_x = a * g + b * (x - mean) + d: the formula above with its per-channel factors folded.
    std::vector<T> a(length), b(length), d(length);
    for (int64_t c = c0; c < c1; ++c) {
      const double rstd = static_cast<double>(ps[c]);
      const double sum_g = channel_total(sums_g, c - c0, L.plane());
      const double sum_g_xhat = channel_total(sums_g_centered, c - c0, L.plane()) * rstd;
      if (pgb) pgb[c] = static_cast<T>(sum_g);
      if (pgw) pgw[c] = static_cast<T>(sum_g_xhat);
      const double gain = (pw ? static_cast<double>(pw[c]) : 1.0) * rstd;
      const int64_t at = (c - c0) * L.plane();
      std::fill_n(a.begin() + at, L.plane(), static_cast<T>(gain));
      std::fill_n(b.begin() + at, L.plane(), static_cast<T>(-gain * sum_g_xhat * inv_count * rstd));
      std::fill_n(d.begin() + at, L.plane(), static_cast<T>(-gain * sum_g * inv_count));
    }
    if (!pgx) return;
    const T* pg = Activation::kFused ? pgx : pgy;
    for (int64_t n = 0; n < L.batch(); ++n) {
      const T* g = pg + L.segment(n, c0);
      const T* in = px + L.segment(n, c0);
      T* out = pgx + L.segment(n, c0);
#pragma omp simd
      for (int64_t j = 0; j < length; ++j) out[j] = a[j] * g[j] + b[j] * (in[j] - m[j]) + d[j];
    }
  });
}

}  // namespace

void cpu_conv::im2col_forward(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& y, Conv2dParams p) {
  dispatch_floating(x.dtype(), "conv2d", [&](auto tag) { conv2d_forward<decltype(tag)>(x, w, bias, y, p); });
}

void cpu_conv::im2col_backward(const Tensor& grad_y, const Tensor& x, const Tensor& w, const Tensor& grad_x,
                               const Tensor& grad_w, const Tensor& grad_bias, Conv2dParams p) {
  dispatch_floating(x.dtype(), "conv2d_backward", [&](auto tag) {
    conv2d_backward_impl<decltype(tag)>(grad_y, x, w, grad_x, grad_w, grad_bias, p);
  });
}

void cpu_conv::bias_gradient(const Tensor& grad_y, const Tensor& grad_bias) {
  dispatch_floating(grad_y.dtype(), "conv2d_backward",
                    [&](auto tag) { bias_gradient_impl<decltype(tag)>(grad_y, grad_bias); });
}

void CpuBackend::conv2d(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& y, Conv2dParams p) {
  if (cpu_conv::direct_pays_off(x, w, p))
    cpu_conv::direct_forward(x, w, bias, y, p);
  else if (cpu_conv::dense_pays_off(x, w, p))
    cpu_conv::dense_forward(x, w, bias, y, p);
  else if (cpu_conv::winograd_pays_off(x, w, p))
    cpu_conv::winograd_forward(x, w, bias, y, p);
  else
    cpu_conv::im2col_forward(x, w, bias, y, p);
}

void CpuBackend::conv2d_backward(const Tensor& grad_y, const Tensor& x, const Tensor& w, const Tensor& grad_x,
                                 const Tensor& grad_w, const Tensor& grad_bias, Conv2dParams p) {
  if (cpu_conv::direct_pays_off(x, w, p))
    cpu_conv::direct_backward(grad_y, x, w, grad_x, grad_w, grad_bias, p);
  else if (cpu_conv::dense_pays_off(x, w, p))
    cpu_conv::dense_backward(grad_y, x, w, grad_x, grad_w, grad_bias, p);
  else if (cpu_conv::winograd_pays_off(x, w, p))
    cpu_conv::winograd_backward(grad_y, x, w, grad_x, grad_w, grad_bias, p);
  else
    cpu_conv::im2col_backward(grad_y, x, w, grad_x, grad_w, grad_bias, p);
}

void CpuBackend::max_pool2d(const Tensor& x, const Tensor& y, const Tensor& indices, Pool2dParams p) {
  dispatch_floating(x.dtype(), "max_pool2d", [&](auto tag) { max_pool2d_forward<decltype(tag)>(x, y, indices, p); });
}

void CpuBackend::max_pool2d_backward(const Tensor& grad_y, const Tensor& indices, const Tensor& grad_x) {
  dispatch_floating(grad_y.dtype(), "max_pool2d_backward",
                    [&](auto tag) { max_pool2d_backward_impl<decltype(tag)>(grad_y, indices, grad_x); });
}

void CpuBackend::avg_pool2d(const Tensor& x, const Tensor& y, Pool2dParams p) {
  dispatch_floating(x.dtype(), "avg_pool2d", [&](auto tag) { avg_pool2d_forward<decltype(tag)>(x, y, p); });
}

void CpuBackend::avg_pool2d_backward(const Tensor& grad_y, const Tensor& grad_x, Pool2dParams p) {
  dispatch_floating(grad_y.dtype(), "avg_pool2d_backward",
                    [&](auto tag) { avg_pool2d_backward_impl<decltype(tag)>(grad_y, grad_x, p); });
}

void CpuBackend::batch_norm_stats(const Tensor& x, const Tensor& mean, const Tensor& var) {
  dispatch_floating(x.dtype(), "batch_norm_stats", [&](auto tag) { batch_norm_stats_impl<decltype(tag)>(x, mean, var); });
}

void CpuBackend::batch_norm_apply(const Tensor& x, const Tensor& mean, const Tensor& invstd, const Tensor& weight,
                                  const Tensor& bias, std::optional<UnaryOp> activation, const Tensor& y) {
  dispatch_floating(x.dtype(), "batch_norm_apply", [&](auto tag) {
    with_activation(activation,
                    [&](auto fused) { batch_norm_apply_impl<decltype(tag)>(x, mean, invstd, weight, bias, fused, y); });
  });
}

void CpuBackend::batch_norm_backward(const Tensor& grad_y, const Tensor& x, const Tensor& mean, const Tensor& invstd,
                                     const Tensor& weight, const Tensor& bias, std::optional<UnaryOp> activation,
                                     const Tensor& grad_x, const Tensor& grad_weight, const Tensor& grad_bias) {
  dispatch_floating(x.dtype(), "batch_norm_backward", [&](auto tag) {
    with_activation(activation, [&](auto fused) {
      batch_norm_backward_impl<decltype(tag)>(grad_y, x, mean, invstd, weight, bias, fused, grad_x, grad_weight,
                                              grad_bias);
    });
  });
}

}  // namespace ml
