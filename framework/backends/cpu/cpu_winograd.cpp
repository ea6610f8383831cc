// Winograd's minimal filtering F(2x2, 3x3) for 3x3 convolutions of stride 1 (Lavin & Gray, "Fast
// Algorithms for Convolutional Neural Networks", CVPR 2016).
//
// Each 2x2 block of outputs of one (output channel, input channel) pair is
//     Y = A^T [ (G g G^T) (.) (B^T d B) ] A
// for the 3x3 filter g and the 4x4 input tile d under the block, (.) multiplying elementwise: 16
// multiplications where the direct form (and im2col) takes 36. Summed over input channels, each
// of the 16 positions xi of the transformed 4x4 tiles becomes one matrix product
//     M_xi [Cout, tiles] = U_xi [Cout, Cin] @ V_xi [Cin, tiles],   U = G g G^T,  V = B^T d B,
// so a convolution is: transform the input tiles, 16 GEMMs, transform M back with A. That is 2.25x
// fewer multiply-adds than im2col's product (less where the last tiles hang over an odd output
// size), for transforms that only add.
//
//   B^T = [1  0 -1  0]    G = [1    0    0  ]    A^T = [1  1  1  0]
//         [0  1  1  0]        [1/2  1/2  1/2]          [0  1 -1 -1]
//         [0 -1  1  0]        [1/2 -1/2  1/2]
//         [0  1  0 -1]        [0    0    1  ]
//
// The backward passes take the same form. grad_x is the convolution of grad_y, padded by 2 - pad,
// with each filter flipped and its channels swapped. For grad_w: Y = A^T Z A with Z = U (.) V has
// dZ = A dY A^T, so dU_xi [Cout, Cin] = sum over tiles of dZ_xi [Cout, tiles] @ V_xi^T, again 16
// GEMMs, and grad_w = G^T dU G.
//
// The im2col path (cpu_conv.cpp) is the reference; NnConvWinograd's tests hold the two together.
#include <algorithm>
#include <array>
#include <cstdint>
#include <memory>
#include <vector>

#include "framework/backends/cpu/cpu_conv.h"
#include "framework/backends/cpu/cpu_loops.h"

namespace ml::cpu_conv {
namespace {
using cpu_loops::parallel_for;

constexpr int64_t kPositions = 16;  // of a transformed 4x4 tile, xi = 4 * row + column

// A group's transformed tiles (V and M, or V and dZ: 16 * (Cin + Cout) values per tile) should
// stay in the L2 cache between their transform, the products and the transform back.
constexpr int64_t kGroupBytes = 512 * 1024;

int64_t target_tiles(int64_t channels, int64_t element_size) {
  return std::max<int64_t>(1, kGroupBytes / (kPositions * channels * element_size));
}

// The distance, in elements, between the 16 positions' matrices of `size` elements each. The
// transforms write (or read) four positions at once; at distances that are multiples of 4 KiB, as
// [Cin, tiles] matrices often are, each store's address matches the loads after it in its low 12
// bits, which the processor takes for a dependence (4K aliasing): the input transform ran 2.4x
// slower. Rounded up to 1 KiB and then one cache line further, k distances (k < 16) lie at least a
// cache line from a multiple of 1 KiB.
template <typename T>
int64_t position_stride(int64_t size) {
  constexpr int64_t kKiB = 1024 / sizeof(T), kLine = 64 / sizeof(T);
  return (size + kKiB - 1) / kKiB * kKiB + kLine;
}

// Where the tiles of one plane lie: 2x2 blocks of the output, tiles_h x tiles_w of them, whose 4x4
// input tiles start every 2 rows and columns of the padded input. Where the output's size is
// odd, the last tiles hang over it by one row or column and read zeros past the padding.
struct TileGrid {
  int64_t height, width, pad_h, pad_w;  // the input plane and its padding
  int64_t out_h, out_w, tiles_h, tiles_w;
  TileGrid(int64_t height, int64_t width, int64_t pad_h, int64_t pad_w)
      : height(height), width(width), pad_h(pad_h), pad_w(pad_w), out_h(height + 2 * pad_h - 2),
        out_w(width + 2 * pad_w - 2), tiles_h((out_h + 1) / 2), tiles_w((out_w + 1) / 2) {}
  int64_t tiles() const { return tiles_h * tiles_w; }
  int64_t in_plane() const { return height * width; }
  int64_t out_plane() const { return out_h * out_w; }
  int64_t padded_rows() const { return 2 * tiles_h + 2; }  // of the padded input, that the tiles read
  int64_t padded_width() const { return 2 * tiles_w + 2; }
};

// Each transform runs in passes of short loops, one tile per vector lane: first each row of the
// tiles times the right-hand matrix, into scratch arrays in the L1 cache, then the left-hand
// matrix across those rows. (One loop doing both kept 24 pointers live, more than the registers,
// and ran at a quarter of this speed.) The scratch arrays hold a plane's tiles in the order of V's
// and M's columns (row of tiles th, then tile t), so the passes after the first run over all of
// the plane's tiles in one loop, not over rows of 4 or 8 tiles (7x7 and 15x15 outputs).

// V = B^T d B for the tiles of input planes.
template <typename T>
class InputTransform {
 public:
  explicit InputTransform(const TileGrid& g)
      : g_(g), row_(scratch<T>(g.padded_width())), rows_b_(scratch<T>(4 * g.padded_rows() * g.tiles_w)) {}

  // Writes position xi of the plane's tile t (row-major over the grid) to v[xi * stride + t].
  void operator()(const T* plane, T* v, int64_t stride) {
    times_b(plane);
    const int64_t tiles = g_.tiles();
    for (int64_t j = 0; j < 4; ++j) {
      // B^T (d B), column j: tile (th, t)'s rows d0..d3 (padded rows 2 th .. 2 th + 3) become
      // d0 - d2, d1 + d2, d2 - d1, d1 - d3.
      const T* __restrict d0 = even_rows(j);
      const T* __restrict d1 = odd_rows(j);
      const T* __restrict d2 = d0 + g_.tiles_w;
      const T* __restrict d3 = d1 + g_.tiles_w;
      T* __restrict v0 = v + j * stride;
      T* __restrict v1 = v0 + 4 * stride;
      T* __restrict v2 = v1 + 4 * stride;
      T* __restrict v3 = v2 + 4 * stride;
      for (int64_t k = 0; k < tiles; ++k) {
        v0[k] = d0[k] - d2[k];
        v1[k] = d1[k] + d2[k];
        v2[k] = d2[k] - d1[k];
        v3[k] = d1[k] - d3[k];
      }
    }
  }

 private:
  // Column j of (d B) for the tiles' parts of the padded rows 2q (even) or 2q + 1 (odd), at
  // q * tiles_w + t: row 2 th + 2 of tile (th, t) is row 2 (th + 1) of tile (th + 1, t).
  T* even_rows(int64_t j) { return rows_b_.get() + 2 * j * half_rows(); }
  T* odd_rows(int64_t j) { return even_rows(j) + half_rows(); }
  int64_t half_rows() const { return (g_.tiles_h + 1) * g_.tiles_w; }

  // Each padded row's tile parts, columns 2t .. 2t + 3 = (a, b, c, e), times B's columns:
  // a - c, b + c, c - b, b - e.
  void times_b(const T* plane) {
    const int64_t tiles_w = g_.tiles_w;
    T* row = row_.get();  // one padded row: pad_w zeros, the plane's row, zeros
    std::fill(row, row + g_.padded_width(), T(0));
    for (int64_t r = 0; r < g_.padded_rows(); ++r) {
      const int64_t at = r / 2 * tiles_w;
      T* __restrict out0 = (r % 2 ? odd_rows(0) : even_rows(0)) + at;
      T* __restrict out1 = (r % 2 ? odd_rows(1) : even_rows(1)) + at;
      T* __restrict out2 = (r % 2 ? odd_rows(2) : even_rows(2)) + at;
      T* __restrict out3 = (r % 2 ? odd_rows(3) : even_rows(3)) + at;
      const int64_t ih = r - g_.pad_h;
      if (ih < 0 || ih >= g_.height) {
        for (T* out : {out0, out1, out2, out3}) std::fill(out, out + tiles_w, T(0));
        continue;
      }
      copy_row(plane + ih * g_.width, g_.width, row + g_.pad_w);
      const T* __restrict in = row;
      for (int64_t t = 0; t < tiles_w; ++t) {
        const T a = in[2 * t], b = in[2 * t + 1], c = in[2 * t + 2], e = in[2 * t + 3];
        out0[t] = a - c;
        out1[t] = b + c;
        out2[t] = c - b;
        out3[t] = b - e;
      }
    }
  }

  const TileGrid& g_;
  std::unique_ptr<T[]> row_, rows_b_;
};

// Y = A^T M A + bias for the tiles of output planes.
template <typename T>
class OutputTransform {
 public:
  explicit OutputTransform(const TileGrid& g) : g_(g), rows_a_(scratch<T>(8 * g.tiles())), y_(scratch<T>(4 * g.tiles())) {}

  // Reads position xi of tile t from m[xi * stride + t]; writes the plane (out_h x out_w).
  void operator()(const T* m, int64_t stride, T bias, T* plane) {
    const int64_t tiles = g_.tiles();
    for (int64_t i = 0; i < 4; ++i) {
      // M A, row i: (m0, m1, m2, m3) times A's columns makes m0 + m1 + m2 and m1 - m2 - m3.
      const T* __restrict m0 = m + 4 * i * stride;
      const T* __restrict m1 = m0 + stride;
      const T* __restrict m2 = m1 + stride;
      const T* __restrict m3 = m2 + stride;
      T* __restrict left = rows_a_.get() + 2 * i * tiles;
      T* __restrict right = left + tiles;
      for (int64_t k = 0; k < tiles; ++k) {
        left[k] = m0[k] + m1[k] + m2[k];
        right[k] = m1[k] - m2[k] - m3[k];
      }
    }
    // A^T (M A): rows r0 + r1 + r2 and r1 - r2 - r3 of the (left, right) pairs: the 2x2 outputs.
    const T* __restrict r = rows_a_.get();
    T* __restrict y = y_.get();  // [top left | top right | bottom left | bottom right], tiles each
    const int64_t n = tiles;
    for (int64_t k = 0; k < tiles; ++k) {
      y[k] = r[k] + r[2 * n + k] + r[4 * n + k] + bias;
      y[n + k] = r[n + k] + r[3 * n + k] + r[5 * n + k] + bias;
      y[2 * n + k] = r[2 * n + k] - r[4 * n + k] - r[6 * n + k] + bias;
      y[3 * n + k] = r[3 * n + k] - r[5 * n + k] - r[7 * n + k] + bias;
    }
    for (int64_t th = 0; th < g_.tiles_h; ++th) {
      interleave(y + th * g_.tiles_w, y + n + th * g_.tiles_w, plane + 2 * th * g_.out_w);
      if (2 * th + 1 < g_.out_h)
        interleave(y + 2 * n + th * g_.tiles_w, y + 3 * n + th * g_.tiles_w, plane + (2 * th + 1) * g_.out_w);
    }
  }

 private:
  // An output row from its tiles' left and right columns (the last right one dropped at an odd width).
  void interleave(const T* __restrict left, const T* __restrict right, T* __restrict row) const {
    const int64_t pairs = g_.out_w / 2;
    for (int64_t t = 0; t < pairs; ++t) {
      row[2 * t] = left[t];
      row[2 * t + 1] = right[t];
    }
    if (g_.out_w % 2) row[g_.out_w - 1] = left[pairs];
  }

  const TileGrid& g_;
  std::unique_ptr<T[]> rows_a_, y_;
};

// dZ = A dY A^T for the 2x2 blocks of grad_y's planes (zeros past an odd last row or column: the
// forward computed those outputs and dropped them).
template <typename T>
class GradientTransform {
 public:
  explicit GradientTransform(const TileGrid& g)
      : g_(g), row_(scratch<T>(2 * g.tiles_w)), blocks_(scratch<T>(4 * g.tiles())), rows_a_(scratch<T>(8 * g.tiles())) {}

  // Writes position xi of tile t to z[xi * stride + t].
  void operator()(const T* plane, T* z, int64_t stride) {
    const int64_t tiles = g_.tiles(), n = tiles;
    split(plane);
    // A dY: each block's rows dY0 = (e0, o0) and dY1 = (e1, o1) become the rows dY0, dY0 + dY1,
    // dY0 - dY1, -dY1, each an (even, odd) pair.
    const T* __restrict s = blocks_.get();
    T* __restrict r = rows_a_.get();
    for (int64_t k = 0; k < tiles; ++k) {
      r[k] = s[k];
      r[n + k] = s[n + k];
      r[2 * n + k] = s[k] + s[2 * n + k];
      r[3 * n + k] = s[n + k] + s[3 * n + k];
      r[4 * n + k] = s[k] - s[2 * n + k];
      r[5 * n + k] = s[n + k] - s[3 * n + k];
      r[6 * n + k] = -s[2 * n + k];
      r[7 * n + k] = -s[3 * n + k];
    }
    for (int64_t i = 0; i < 4; ++i) {
      // Row i, (a, b), times A^T: a, a + b, a - b, -b.
      const T* __restrict a = rows_a_.get() + 2 * i * n;
      const T* __restrict b = a + n;
      T* __restrict z0 = z + 4 * i * stride;
      T* __restrict z1 = z0 + stride;
      T* __restrict z2 = z1 + stride;
      T* __restrict z3 = z2 + stride;
      for (int64_t k = 0; k < tiles; ++k) {
        z0[k] = a[k];
        z1[k] = a[k] + b[k];
        z2[k] = a[k] - b[k];
        z3[k] = -b[k];
      }
    }
  }

 private:
  // blocks_ = [e0 | o0 | e1 | o1], tiles each: the even and odd columns of the blocks' first (0)
  // and second (1) rows, tile (th, t) at th * tiles_w + t.
  void split(const T* plane) {
    const int64_t tiles_w = g_.tiles_w, n = g_.tiles();
    T* row = row_.get();  // an output row and, at an odd width, one zero
    std::fill(row, row + 2 * tiles_w, T(0));
    for (int64_t th = 0; th < g_.tiles_h; ++th)
      for (int64_t k = 0; k < 2; ++k) {
        T* __restrict even = blocks_.get() + 2 * k * n + th * tiles_w;
        T* __restrict odd = even + n;
        if (2 * th + k >= g_.out_h) {
          std::fill(even, even + tiles_w, T(0));
          std::fill(odd, odd + tiles_w, T(0));
          continue;
        }
        copy_row(plane + (2 * th + k) * g_.out_w, g_.out_w, row);
        for (int64_t t = 0; t < tiles_w; ++t) {
          even[t] = row[2 * t];
          odd[t] = row[2 * t + 1];
        }
      }
  }

  const TileGrid& g_;
  std::unique_ptr<T[]> row_, blocks_, rows_a_;
};

// u[xi][o][i] = (G g G^T)[xi] for the 3x3 filter g = filter(o, i) (row-major) of every pair.
template <typename T, typename Filter>
void transform_filters(int64_t outs, int64_t ins, Filter filter, T* u) {
  const auto times_g = [](T a, T b, T c) { return std::array<T, 4>{a, (a + b + c) / 2, (a - b + c) / 2, c}; };
  for (int64_t o = 0; o < outs; ++o)
    for (int64_t i = 0; i < ins; ++i) {
      const std::array<T, 9> g = filter(o, i);
      std::array<std::array<T, 4>, 3> rows;  // g G^T: each filter row times G^T
      for (int r = 0; r < 3; ++r) rows[r] = times_g(g[3 * r], g[3 * r + 1], g[3 * r + 2]);
      for (int c = 0; c < 4; ++c) {  // G (g G^T), column c
        const std::array<T, 4> column = times_g(rows[0][c], rows[1][c], rows[2][c]);
        for (int r = 0; r < 4; ++r) u[((4 * r + c) * outs + o) * ins + i] = column[r];
      }
    }
}

// y [batch, outs, out_h, out_w] = the convolution of x [batch, ins, height, width] with the
// filters transformed in u [16, outs, ins], plus bias (or none).
template <typename T>
void convolve(const T* x, int64_t batch, int64_t ins, const TileGrid& g, const T* u, int64_t outs, const T* bias,
              T* y) {
  const ConvPlan plan = plan_groups(batch, g.tiles(), target_tiles(ins + outs, sizeof(T)));
  const int64_t tiles = g.tiles(), max_columns = plan.images_per_group * tiles;
  parallel_for(plan.teams, plan.teams > 1, [&](int64_t team) {
    InputTransform<T> input(g);
    OutputTransform<T> output(g);
    const int64_t v_stride = position_stride<T>(ins * max_columns), m_stride = position_stride<T>(outs * max_columns);
    auto v = scratch<T>(kPositions * v_stride), m = scratch<T>(kPositions * m_stride);
    for (int64_t group = plan.group_begin(team); group < plan.group_end(team); ++group) {
      const int64_t first = group * plan.images_per_group;
      const int64_t count = std::min(plan.images_per_group, batch - first), n = count * tiles;
      for (int64_t k = 0; k < count; ++k)
        for (int64_t c = 0; c < ins; ++c)
          input(x + ((first + k) * ins + c) * g.in_plane(), v.get() + c * n + k * tiles, v_stride);
      for (int64_t xi = 0; xi < kPositions; ++xi)
        gemm<T>(false, false, outs, n, ins, u + xi * outs * ins, ins, v.get() + xi * v_stride, n, T(0),
                m.get() + xi * m_stride, n);
      for (int64_t k = 0; k < count; ++k)
        for (int64_t c = 0; c < outs; ++c)
          output(m.get() + c * n + k * tiles, m_stride, bias ? bias[c] : T(0),
                 y + ((first + k) * outs + c) * g.out_plane());
    }
  });
}

// grad_w [outs, ins, 3, 3] of the convolution of x by the grid g, from grad_y [batch, outs, out_h, out_w].
template <typename T>
void filter_gradient(const T* x, const T* grad_y, int64_t batch, int64_t ins, int64_t outs, const TileGrid& g,
                     T* grad_w) {
  const ConvPlan plan = plan_groups(batch, g.tiles(), target_tiles(ins + outs, sizeof(T)));
  const int64_t tiles = g.tiles(), max_columns = plan.images_per_group * tiles, positions_size = outs * ins;
  // Each team sums its images into its own dU; the partials are added in team order afterwards, so
  // the result does not depend on scheduling.
  std::vector<std::unique_ptr<T[]>> partial(plan.teams);
  parallel_for(plan.teams, plan.teams > 1, [&](int64_t team) {
    partial[team] = scratch<T>(kPositions * positions_size);
    T* du = partial[team].get();
    std::fill(du, du + kPositions * positions_size, T(0));
    InputTransform<T> input(g);
    GradientTransform<T> gradient(g);
    const int64_t v_stride = position_stride<T>(ins * max_columns), dz_stride = position_stride<T>(outs * max_columns);
    auto v = scratch<T>(kPositions * v_stride), dz = scratch<T>(kPositions * dz_stride);
    for (int64_t group = plan.group_begin(team); group < plan.group_end(team); ++group) {
      const int64_t first = group * plan.images_per_group;
      const int64_t count = std::min(plan.images_per_group, batch - first), n = count * tiles;
      for (int64_t k = 0; k < count; ++k) {
        for (int64_t c = 0; c < ins; ++c)
          input(x + ((first + k) * ins + c) * g.in_plane(), v.get() + c * n + k * tiles, v_stride);
        for (int64_t c = 0; c < outs; ++c)
          gradient(grad_y + ((first + k) * outs + c) * g.out_plane(), dz.get() + c * n + k * tiles, dz_stride);
      }
      for (int64_t xi = 0; xi < kPositions; ++xi)  // dU_xi += dZ_xi @ V_xi^T
        gemm<T>(false, true, outs, ins, n, dz.get() + xi * dz_stride, n, v.get() + xi * v_stride, n, T(1),
                du + xi * positions_size, ins);
    }
  });
  // grad_w = G^T dU G, G^T = [1 1/2 1/2 0; 0 1/2 -1/2 0; 0 1/2 1/2 1].
  const auto times_g_transposed = [](T a, T b, T c, T d) {
    return std::array<T, 3>{a + (b + c) / 2, (b - c) / 2, (b + c) / 2 + d};
  };
  for (int64_t p = 0; p < positions_size; ++p) {
    std::array<T, kPositions> du;
    for (int64_t xi = 0; xi < kPositions; ++xi) {
      du[xi] = partial[0][xi * positions_size + p];
      for (int64_t team = 1; team < plan.teams; ++team) du[xi] += partial[team][xi * positions_size + p];
    }
    std::array<std::array<T, 3>, 4> rows;  // dU G: each row of dU times G
    for (int r = 0; r < 4; ++r) rows[r] = times_g_transposed(du[4 * r], du[4 * r + 1], du[4 * r + 2], du[4 * r + 3]);
    for (int c = 0; c < 3; ++c) {  // G^T (dU G), column c
      const std::array<T, 3> column = times_g_transposed(rows[0][c], rows[1][c], rows[2][c], rows[3][c]);
      for (int r = 0; r < 3; ++r) grad_w[p * 9 + 3 * r + c] = column[r];
    }
  }
}

template <typename T>
void forward(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& y, Conv2dParams p) {
  const int64_t outs = w.size(0), ins = w.size(1);
  const T* pw = w.data<T>();
  auto u = scratch<T>(kPositions * outs * ins);
  transform_filters<T>(
      outs, ins,
      [&](int64_t o, int64_t i) {
        std::array<T, 9> g;
        std::copy(pw + (o * ins + i) * 9, pw + (o * ins + i + 1) * 9, g.begin());
        return g;
      },
      u.get());
  convolve<T>(x.data<T>(), x.size(0), ins, TileGrid(x.size(2), x.size(3), p.pad_h, p.pad_w), u.get(), outs,
              bias.defined() ? bias.data<T>() : nullptr, y.data<T>());
}

template <typename T>
void backward(const Tensor& grad_y, const Tensor& x, const Tensor& w, const Tensor& grad_x, const Tensor& grad_w,
              Conv2dParams p) {
  const int64_t outs = w.size(0), ins = w.size(1), batch = x.size(0);
  const TileGrid forward_grid(x.size(2), x.size(3), p.pad_h, p.pad_w);
  if (grad_x.defined()) {
    // grad_x[i] = sum over o of grad_y[o] convolved with filter (o, i) turned by 180 degrees, padded 2 - pad.
    const T* pw = w.data<T>();
    auto u = scratch<T>(kPositions * ins * outs);
    transform_filters<T>(
        ins, outs,
        [&](int64_t i, int64_t o) {
          std::array<T, 9> g;
          std::reverse_copy(pw + (o * ins + i) * 9, pw + (o * ins + i + 1) * 9, g.begin());
          return g;
        },
        u.get());
    const TileGrid grid(forward_grid.out_h, forward_grid.out_w, 2 - p.pad_h, 2 - p.pad_w);
    convolve<T>(grad_y.data<T>(), batch, outs, grid, u.get(), ins, nullptr, grad_x.data<T>());
  }
  if (grad_w.defined()) filter_gradient<T>(x.data<T>(), grad_y.data<T>(), batch, ins, outs, forward_grid, grad_w.data<T>());
}

}  // namespace

bool winograd_applies(const Tensor& x, const Tensor& w, Conv2dParams p) {
  const auto padding_fits = [](int64_t pad) { return pad >= 0 && pad <= 2; };
  return (x.dtype() == DType::Float32 || x.dtype() == DType::Float64) && w.size(2) == 3 && w.size(3) == 3 &&
         p.stride_h == 1 && p.stride_w == 1 && padding_fits(p.pad_h) && padding_fits(p.pad_w) &&
         x.size(2) + 2 * p.pad_h >= 3 && x.size(3) + 2 * p.pad_w >= 3;
}

bool winograd_pays_off(const Tensor& x, const Tensor& w, Conv2dParams p) {
  if (!winograd_applies(x, w, p)) return false;
  const TileGrid g(x.size(2), x.size(3), p.pad_h, p.pad_w);
  return 3 * 4 * g.tiles() <= 4 * g.out_plane();
}

void winograd_forward(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& y, Conv2dParams p) {
  dispatch_floating(x.dtype(), "conv2d", [&](auto tag) { forward<decltype(tag)>(x, w, bias, y, p); });
}

void winograd_backward(const Tensor& grad_y, const Tensor& x, const Tensor& w, const Tensor& grad_x,
                       const Tensor& grad_w, const Tensor& grad_bias, Conv2dParams p) {
  if (grad_bias.defined()) bias_gradient(grad_y, grad_bias);
  dispatch_floating(x.dtype(), "conv2d_backward",
                    [&](auto tag) { backward<decltype(tag)>(grad_y, x, w, grad_x, grad_w, p); });
}

}  // namespace ml::cpu_conv
