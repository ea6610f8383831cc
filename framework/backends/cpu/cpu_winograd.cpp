// Winograd's minimal filtering F(4x4, 3x3) for 3x3 convolutions of stride 1 (Lavin & Gray, "Fast
// Algorithms for Convolutional Neural Networks", CVPR 2016).
//
// Each 4x4 block of outputs of one (output channel, input channel) pair is
//     Y = A^T [ (G g G^T) (.) (B^T d B) ] A
// for the 3x3 filter g and the 6x6 input tile d under the block, (.) multiplying elementwise: 36
// multiplications where the direct form (and im2col) takes 144. Summed over input channels, each
// of the 36 positions xi of the transformed tiles becomes one matrix product
//     M_xi [Cout, tiles] = U_xi [Cout, Cin] @ V_xi [Cin, tiles],   U = G g G^T,  V = B^T d B,
// so a convolution is: transform the input tiles, 36 GEMMs, transform M back with A: 4x fewer
// multiply-adds than im2col's product (fewer where the last tiles hang over the output), for
// transforms of a few multiply-adds per value. The matrices are the paper's (struct Minimal
// below, interpolation points 0, 1, -1, 2, -2 and infinity). F(2x2, 3x3), with 4x4 tiles and
// additions only, saves 2.25x; on the CNN's layers it ran 1.15-1.8x slower than F(4x4) at four
// and even at the fifth (more transformed values per output to move: 16 per 4 against 36 per
// 16), so only F(4x4) is kept. Its price is rounding: the matrices' entries (5, 8, 1/24) make
// float32 results about 10x further from exact than im2col's (about 1e-5 of the outputs' scale).
//
// The backward passes take the same form. grad_x is the convolution of grad_y, padded by 2 - pad,
// with each filter flipped and its channels swapped. For grad_w: Y = A^T Z A with Z = U (.) V has
// dZ = A dY A^T, so dU_xi [Cout, Cin] = sum over tiles of dZ_xi [Cout, tiles] @ V_xi^T, again 36
// GEMMs, and grad_w = G^T dU G.
//
// The im2col path (cpu_conv.cpp) is the reference; NnConvWinograd's tests hold the two together.
#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

#include "framework/backends/cpu/cpu_conv.h"
#include "framework/backends/cpu/cpu_loops.h"

namespace ml::cpu_conv {
namespace {
using cpu_loops::kParallelGrain;
using cpu_loops::parallel_for;

template <int Rows, int Cols>
using Matrix = std::array<std::array<double, Cols>, Rows>;

template <int Rows, int Cols>
constexpr Matrix<Cols, Rows> transposed(const Matrix<Rows, Cols>& m) {
  Matrix<Cols, Rows> t{};
  for (int r = 0; r < Rows; ++r)
    for (int c = 0; c < Cols; ++c) t[c][r] = m[r][c];
  return t;
}

// F(4x4, 3x3): output tiles of 4x4 from input tiles of 6x6, which transform into 36 positions.
constexpr int kOut = 4, kTile = 6;
constexpr int64_t kPositions = kTile * kTile;

// Its matrices: B^T [6, 6], G [6, 3], A^T [4, 6] (and A).
struct Minimal {
  static constexpr Matrix<6, 6> BT{{{4, 0, -5, 0, 1, 0},
                                     {0, -4, -4, 1, 1, 0},
                                     {0, 4, -4, -1, 1, 0},
                                     {0, -2, -1, 2, 1, 0},
                                     {0, 2, -1, -2, 1, 0},
                                     {0, 4, 0, -5, 0, 1}}};
  static constexpr Matrix<6, 3> G{{{1.0 / 4, 0, 0},
                                   {-1.0 / 6, -1.0 / 6, -1.0 / 6},
                                   {-1.0 / 6, 1.0 / 6, -1.0 / 6},
                                   {1.0 / 24, 1.0 / 12, 1.0 / 6},
                                   {1.0 / 24, -1.0 / 12, 1.0 / 6},
                                   {0, 0, 1}}};
  static constexpr Matrix<4, 6> AT{{{1, 1, 1, 1, 1, 0},  //
                                    {0, 1, -1, 2, -2, 0},
                                    {0, 1, 1, 4, 4, 0},
                                    {0, 1, -1, 8, -8, 1}}};
  static constexpr Matrix<6, 4> A = transposed<4, 6>(AT);
};

// fn(i) for i = 0 .. N-1 as compile-time constants (std::integral_constant<int, i>), written out:
// the transforms' coefficients are then constants the compiler folds into the arithmetic.
template <typename Fn, int... I>
__attribute__((always_inline)) inline void unrolled_sequence(Fn& fn, std::integer_sequence<int, I...>) {
  (fn(std::integral_constant<int, I>{}), ...);
}
template <int N, typename Fn>
__attribute__((always_inline)) inline void unrolled(Fn&& fn) {
  unrolled_sequence(fn, std::make_integer_sequence<int, N>{});
}

template <size_t N>
constexpr size_t first_nonzero(const std::array<double, N>& row) {
  size_t n = 0;
  while (n < N && row[n] == 0) ++n;
  return n;
}

// coef * value for a value or a vector of float32 values.
template <typename T>
__attribute__((always_inline)) inline T scaled(double coef, T value) {
  using Scalar = std::conditional_t<std::is_arithmetic_v<T>, T, float>;
  return coef == 1 ? value : coef == -1 ? -value : static_cast<Scalar>(coef) * value;
}

// sum over n of Mat[Row][n] * in[n] for a constant matrix: zeros skipped, ones added or
// subtracted, no leading 0 + (which the compiler may not drop: 0 + -0 is +0).
template <const auto& Mat, int Row, typename T, size_t N>
__attribute__((always_inline)) inline T combine(const T (&in)[N]) {
  constexpr auto& row = Mat[Row];
  constexpr size_t first = first_nonzero(row);
  T sum = scaled(row[first], in[first]);
  unrolled<N>([&](auto n) {
    constexpr double coef = row[n];
    if constexpr (n > first && coef != 0) sum += scaled(coef, in[n]);
  });
  return sum;
}

// out[i][k] = sum over n of Mat[i][n] * in[n][k] (+ shift) for every row i of the constant matrix
// and the tiles k < count, one tile per vector lane: the transforms' passes.
template <const auto& Mat, bool kShifted = false, typename T, size_t kRows, size_t kCols>
__attribute__((always_inline)) inline void apply_matrix(const T* const (&in)[kCols], T* const (&out)[kRows],
                                                        int64_t count, T shift = T(0)) {
  static_assert(Mat.size() == kRows && Mat[0].size() == kCols);
#pragma omp simd
  for (int64_t k = 0; k < count; ++k) {
    T values[kCols];
    unrolled<kCols>([&](auto n) { values[n] = in[n][k]; });
    unrolled<kRows>([&](auto i) {
      if constexpr (kShifted)
        out[i][k] = combine<Mat, i>(values) + shift;
      else
        out[i][k] = combine<Mat, i>(values);
    });
  }
}

// A group's transformed tiles (V and M, or V and dZ: 36 (Cin + Cout) values per tile) should stay
// in the L2 cache between their transform, the products and the transform back.
constexpr int64_t kGroupBytes = 512 * 1024;

int64_t target_tiles(int64_t positions, int64_t channels, int64_t element_size) {
  return std::max<int64_t>(1, kGroupBytes / (positions * channels * element_size));
}

// The distance, in elements, between the positions' matrices of `size` elements each. The
// transforms write (or read) several positions at once; at distances that are multiples of 4 KiB,
// as [Cin, tiles] matrices often are, each store's address matches the loads after it in its low
// 12 bits, which the processor takes for a dependence (4K aliasing): the input transform ran 2.4x
// slower. Rounded up to 1 KiB and then one cache line further, positions k apart lie at least a
// cache line from a multiple of 1 KiB unless k is a multiple of 16, a distance the transforms
// never touch at once (1 to 5 positions, or multiples of 6 below 36).
template <typename T>
int64_t position_stride(int64_t size) {
  constexpr int64_t kKiB = 1024 / sizeof(T), kLine = 64 / sizeof(T);
  return (size + kKiB - 1) / kKiB * kKiB + kLine;
}

// Where the tiles of one plane lie: 4x4 blocks of the output, tiles_h x tiles_w of them, whose 6x6
// input tiles start every 4 rows and columns of the padded input. Where 4 does not divide the
// output's size, the last tiles hang over it and read zeros past the padding.
struct TileGrid {
  int64_t height, width, pad_h, pad_w;  // the input plane and its padding
  int64_t out_h, out_w, tiles_h, tiles_w;
  TileGrid(int64_t height, int64_t width, int64_t pad_h, int64_t pad_w)
      : height(height), width(width), pad_h(pad_h), pad_w(pad_w), out_h(height + 2 * pad_h - 2),
        out_w(width + 2 * pad_w - 2), tiles_h((out_h + kOut - 1) / kOut), tiles_w((out_w + kOut - 1) / kOut) {}
  int64_t tiles() const { return tiles_h * tiles_w; }
  int64_t in_plane() const { return height * width; }
  int64_t out_plane() const { return out_h * out_w; }
  int64_t padded_rows() const { return kOut * tiles_h + 2; }  // of the padded input, that the tiles read
  // Multiply-adds per output that the products take, against im2col's 9.
  double products_per_output() const {
    return static_cast<double>(kPositions * tiles()) / static_cast<double>(out_plane());
  }
};

// Copies a plane of rows x width values into `out`, its rows out_width apart (into the zeros of a
// transform's padded plane, whole before any of its rows is read: read just after its copy, a row's
// loads waited for the copy's stores).
template <typename T>
void copy_plane(const T* plane, int64_t rows, int64_t width, T* out, int64_t out_width) {
  for (int64_t r = 0; r < rows; ++r) copy_row(plane + r * width, width, out + r * out_width);
}

// Asks for a plane of `size` values (the next one a transform reads, or with kForWriting writes,
// while it works on this one): a group's planes of one channel lie an image apart, too far for the
// hardware's prefetch, and each copy waited on memory (the weight gradient of 32 -> 32 at 15x15,
// one thread: 7.5 -> 7.1 ms; the output transform's writes, below).
template <bool kForWriting = false, typename T>
void prefetch_plane(const T* plane, int64_t size) {
  constexpr int64_t kLine = 64 / sizeof(T);
  for (int64_t i = 0; i < size + kLine; i += kLine) __builtin_prefetch(plane + i, kForWriting);
}

typedef float Quad __attribute__((vector_size(16)));
typedef int32_t QuadIndices __attribute__((vector_size(16)));

// columns[c] = row[4 t + c] for kTiles = 2 or 4 tiles t (the lanes past kTiles unused) and the
// columns c < Columns (4 or 6) of tiles that start every 4 values of a row, by transposes of the
// row's vectors of 4: quads[q] = row[4 q .. 4 q + 3], and column c + 4 of a tile is column c of
// the next one. `row` readable up to 4 kTiles + 4 values (4 kTiles for 4 columns).
template <int kTiles, int Columns>
__attribute__((always_inline)) inline void column_quads(const float* row, Quad (&columns)[Columns]) {
  constexpr int kQuads = Columns > kOut ? kTiles + 1 : kTiles;
  Quad quads[kQuads];
  for (int q = 0; q < kQuads; ++q) std::memcpy(&quads[q], row + kOut * q, sizeof(Quad));
  // Columns 4 first + c and 4 first + c + 1 of the tiles, from quads first, first + 1, ...
  auto columns_pair = [&](auto c, auto first) {
    constexpr QuadIndices kInterleave{c, 4 + c, c + 1, 5 + c};
    const Quad low = __builtin_shuffle(quads[first], quads[first + 1], kInterleave);  // tiles 0, 1
    if constexpr (kTiles == 2) {
      columns[kOut * first + c] = low;
      columns[kOut * first + c + 1] = __builtin_shuffle(low, QuadIndices{2, 3, 2, 3});
    } else {
      const Quad high = __builtin_shuffle(quads[first + 2], quads[first + 3], kInterleave);  // tiles 2, 3
      columns[kOut * first + c] = __builtin_shuffle(low, high, QuadIndices{0, 1, 4, 5});
      columns[kOut * first + c + 1] = __builtin_shuffle(low, high, QuadIndices{2, 3, 6, 7});
    }
  };
  using Zero = std::integral_constant<int, 0>;
  using One = std::integral_constant<int, 1>;
  using Two = std::integral_constant<int, 2>;
  columns_pair(Zero{}, Zero{});
  columns_pair(Two{}, Zero{});
  if constexpr (Columns == kTile) columns_pair(Zero{}, One{});
}

// The first kTiles values of a vector of 4, or a single value, to `out`.
template <int kTiles, typename T, typename Values>
__attribute__((always_inline)) inline void store_lanes(T* out, const Values& values) {
  if constexpr (std::is_arithmetic_v<Values>)
    *out = values;
  else
    std::memcpy(out, &values, kTiles * sizeof(T));
}

// The tiles t < tiles_w of a row whose tiles start every 4 values: emit(columns, t, tiles) for
// runs of tiles t .. t + tiles - 1, columns[c] = row[4 (t + lane) + c] for c < Columns (4 or 6).
// In float32 the runs are 4 tiles and then 2 (column_quads: `row` readable up to 4 tiles_w + 4
// values, 4 tiles_w for 4 columns); tile by tile, with single values, is the reference, and takes a
// last single tile and float64. (Value by value, the gathers of the input and gradient transforms
// took 40% of the weight gradient of 32 -> 32 at 15x15.)
template <int Columns, typename T, typename Emit>
__attribute__((always_inline)) inline void for_row_tiles(const T* row, int64_t tiles_w, Emit&& emit) {
  int64_t t = 0;
  if constexpr (std::is_same_v<T, float>) {
    auto run = [&](auto tiles) {
      Quad columns[Columns];
      column_quads<tiles>(row + kOut * t, columns);
      emit(columns, t, tiles);
      t += tiles;
    };
    while (t + 4 <= tiles_w) run(std::integral_constant<int, 4>{});
    if (t + 2 <= tiles_w) run(std::integral_constant<int, 2>{});
  }
  for (; t < tiles_w; ++t) {
    T columns[Columns];
    for (int c = 0; c < Columns; ++c) columns[c] = row[kOut * t + c];
    emit(columns, t, std::integral_constant<int, 1>{});
  }
}

// out[c][t] = row[4 t + c] for the tiles t < tiles_w and the columns c < 4: the gradient
// transform's gather of a row of blocks into lanes.
template <typename T>
__attribute__((always_inline)) inline void by_phase(const T* row, int64_t tiles_w, T* const (&out)[kOut]) {
  for_row_tiles<kOut>(row, tiles_w, [&](const auto& columns, int64_t t, auto tiles) {
    for (int c = 0; c < kOut; ++c) store_lanes<tiles>(out[c] + t, columns[c]);
  });
}

// out[j][t] = (d B)[j] = sum over c of row[4 t + c] B[c][j] for the tiles t < tiles_w of a
// padded row: the input transform's first pass, straight from the row. (Gathered into rows of
// lanes first and times B in a second pass, 24 -> 32 at 31x31 took 10% longer in each pass.)
template <typename T>
__attribute__((always_inline)) inline void row_times_b(const T* row, int64_t tiles_w, T* const (&out)[kTile]) {
  for_row_tiles<kTile>(row, tiles_w, [&](const auto& columns, int64_t t, auto tiles) {
    unrolled<kTile>([&](auto j) { store_lanes<tiles>(out[j] + t, combine<Minimal::BT, j>(columns)); });
  });
}

// Each transform runs in passes of short loops, one tile per vector lane: first each row of the
// tiles times the right-hand matrix, into scratch arrays in the L1 cache, then the left-hand
// matrix across those rows. (One loop doing both kept more pointers live than there are
// registers, and ran at a quarter of this speed.) A call takes one channel of a group's images,
// whose tiles lie side by side in V's and M's columns (image k, row of tiles th, tile t): the
// passes run over all of them in one loop. Run plane by plane, the 4 tiles of a 7x7 plane made
// loops of 2 and 4 values, all of it scalar code (64 -> 64 at 7x7, fwd+bwd one thread: 20.5 ->
// 13.8 ms with the three transforms across the images).

// V = B^T d B for the tiles of input planes: each padded row's tiles times B as the row is read
// (row_times_b), then B^T across the rows, two ways. Planes of up to 4 tiles a row (15x15 and
// smaller) keep the rows d B of all the images' tiles side by side, 36 rows of lanes, and run
// B^T over all of them at once; wider planes go plane by plane (in rows of lanes across images
// there, 24 -> 32 at 31x31 with 8 tiles a row took fwd+bwd 63.5 -> 69.9 ms).
template <typename T>
class InputTransform {
 public:
  InputTransform(const TileGrid& g, int64_t max_images)
      : g_(g), across_images_(g.tiles_w <= 4), padded_width_(kOut * g.tiles_w + 2) {
    // row_times_b reads up to 2 values past the last row
    padded_ = scratch<T>(g.padded_rows() * padded_width_ + kOut);
    std::fill(padded_.get(), padded_.get() + g.padded_rows() * padded_width_ + kOut, T(0));
    if (across_images_)
      db_ = scratch<T>(kPositions * max_images * g.tiles());
    else
      rows_b_ = scratch<T>(kTile * kOut * phase_rows());
  }

  // Writes position xi of image k's tile t (row-major over the grid) to v[xi * stride + k * tiles
  // + t], for k < count <= max_images, image k's plane at planes + k * image_stride.
  void operator()(const T* planes, int64_t image_stride, int64_t count, T* v, int64_t stride) {
    if (across_images_) return across_images(planes, image_stride, count, v, stride);
    for (int64_t k = 0; k < count; ++k) plane_by_plane(planes + k * image_stride, v + k * g_.tiles(), stride);
  }

 private:
  void across_images(const T* planes, int64_t image_stride, int64_t count, T* v, int64_t stride) {
    const int64_t tiles = g_.tiles(), lanes = count * tiles;
    T* db = db_.get();  // (d B)[r][j] of image k's tile t at db[(r * 6 + j) * lanes + k * tiles + t]
    for (int64_t k = 0; k < count; ++k) {
      const T* plane = planes + k * image_stride;
      prefetch_plane(k + 1 < count ? plane + image_stride : planes + g_.in_plane(), g_.in_plane());
      copy_into_padded(plane);
      for (int64_t th = 0; th < g_.tiles_h; ++th)
        for (int r = 0; r < kTile; ++r) {  // row r of the row of tiles th
          T* out[kTile];
          for (int j = 0; j < kTile; ++j) out[j] = db + (r * kTile + j) * lanes + k * tiles + th * g_.tiles_w;
          row_times_b(padded_.get() + (kOut * th + r) * padded_width_, g_.tiles_w, out);
        }
    }
    for (int j = 0; j < kTile; ++j) {  // B^T (d B), column j
      const T* in[kTile];
      T* out[kTile];
      for (int r = 0; r < kTile; ++r) in[r] = db + (r * kTile + j) * lanes;
      for (int i = 0; i < kTile; ++i) out[i] = v + (i * kTile + j) * stride;
      apply_matrix<Minimal::BT>(in, out, lanes);
    }
  }

  // The plane inside padded_'s zero border: the rows need no bounds checks.
  void copy_into_padded(const T* plane) {
    copy_plane(plane, g_.height, g_.width, padded_.get() + g_.pad_h * padded_width_ + g_.pad_w, padded_width_);
  }

  void plane_by_plane(const T* plane, T* v, int64_t stride) {
    copy_into_padded(plane);
    for (int64_t r = 0; r < g_.padded_rows(); ++r) {  // each padded row's tiles times B
      T* out[kTile];
      for (int j = 0; j < kTile; ++j) out[j] = rows_b(j, r % kOut) + r / kOut * g_.tiles_w;
      row_times_b(padded_.get() + r * padded_width_, g_.tiles_w, out);
    }
    const int64_t tiles = g_.tiles();
    for (int j = 0; j < kTile; ++j) {
      // B^T (d B), column j: tile (th, t)'s rows are the padded rows 4 th + r, r < 6.
      const T* rows[kTile];
      T* out[kTile];
      for (int r = 0; r < kTile; ++r) rows[r] = rows_b(j, r % kOut) + r / kOut * g_.tiles_w;
      for (int i = 0; i < kTile; ++i) out[i] = v + (i * kTile + j) * stride;
      apply_matrix<Minimal::BT>(rows, out, tiles);
    }
  }

  // Column j of (d B) for the tiles' parts of the padded rows 4 q + phase, at q * tiles_w + t:
  // row 4 th + r of tile (th, t) is found at phase r % 4, q = th + r / 4.
  int64_t phase_rows() const { return (g_.tiles_h + 1) * g_.tiles_w; }
  T* rows_b(int j, int64_t phase) { return rows_b_.get() + (j * kOut + phase) * phase_rows(); }

  const TileGrid& g_;
  bool across_images_;
  int64_t padded_width_;
  Scratch<T> padded_;  // the plane inside a zero border
  Scratch<T> db_;      // across images
  Scratch<T> rows_b_;  // plane by plane
};

// Y = A^T M A + bias for the tiles of one output channel of several images at once: their tiles
// side by side in the passes' vector lanes (7x7 planes have 4 tiles each).
template <typename T>
class OutputTransform {
 public:
  OutputTransform(const TileGrid& g, int64_t max_images)
      : g_(g),
        max_lanes_(max_images * g.tiles()),
        rows_a_(scratch<T>(kTile * kOut * max_lanes_)),
        y_(scratch<T>(kOut * kOut * max_lanes_)) {}

  // Reads position xi of image k's tile t from m[xi * stride + k * tiles + t], for k < count <=
  // max_images; writes image k's plane (out_h x out_w) at planes + k * image_stride.
  void operator()(const T* m, int64_t stride, int64_t count, T bias, T* planes, int64_t image_stride) {
    const int64_t lanes = count * g_.tiles();
    for (int i = 0; i < kTile; ++i) {  // M A, row i
      const T* in_rows[kTile];
      T* out[kOut];
      for (int c = 0; c < kTile; ++c) in_rows[c] = m + (i * kTile + c) * stride;
      for (int j = 0; j < kOut; ++j) out[j] = rows_a(i, j);
      apply_matrix<Minimal::AT>(in_rows, out, lanes);
    }
    for (int j = 0; j < kOut; ++j) {  // A^T (M A), column j
      const T* in_rows[kTile];
      T* out[kOut];
      for (int r = 0; r < kTile; ++r) in_rows[r] = rows_a(r, j);
      for (int i = 0; i < kOut; ++i) out[i] = y(i, j);
      apply_matrix<Minimal::AT, true>(in_rows, out, lanes, bias);
    }
    for (int i = 0; i < kOut; ++i) interleave_row(i, lanes);
    for (int64_t k = 0; k < count; ++k) {
      T* plane = planes + k * image_stride;
      // The next image's plane, to be written. (With the rows interleaved below, the forward of the
      // CNN's 3x3 layers at 15x15 and 31x31, one thread: 4-7% faster, 2-4% at 7x7; each alone gave
      // about half of that.)
      if (k + 1 < count) prefetch_plane<true>(plane + image_stride, g_.out_plane());
      for (int64_t th = 0; th < g_.tiles_h; ++th)
        for (int i = 0; i < kOut && kOut * th + i < g_.out_h; ++i)
          copy_row(row_values(i) + kOut * (k * g_.tiles() + th * g_.tiles_w), g_.out_w,
                   plane + (kOut * th + i) * g_.out_w);
    }
  }

 private:
  T* rows_a(int i, int j) { return rows_a_.get() + (i * kOut + j) * max_lanes_; }  // (M A)[i][j]
  T* y(int i, int j) { return y_.get() + (i * kOut + j) * max_lanes_; }            // Y[i][j]
  // Row i of every tile's Y, its 4 values side by side: row_values(i)[4 lane + j] = Y[i][j]. It
  // takes rows_a_'s room, free once Y is made.
  T* row_values(int i) { return rows_a_.get() + i * kOut * max_lanes_; }

  // Fills row_values(i). A row of tiles' output row i is then one run of 4 tiles_w values, the
  // plane's row its first out_w: one copy a row. (Written tile by tile from the four arrays Y[i][j]
  // instead, with the last tile cut at out_w, the rows of 7-31 values ran as short loops and
  // scalar remainders: two thirds of this transform's time.)
  void interleave_row(int i, int64_t lanes) {
    const T* __restrict column0 = y(i, 0);
    const T* __restrict column1 = y(i, 1);
    const T* __restrict column2 = y(i, 2);
    const T* __restrict column3 = y(i, 3);
    T* __restrict out = row_values(i);
    for (int64_t lane = 0; lane < lanes; ++lane) {
      out[kOut * lane] = column0[lane];
      out[kOut * lane + 1] = column1[lane];
      out[kOut * lane + 2] = column2[lane];
      out[kOut * lane + 3] = column3[lane];
    }
  }

  const TileGrid& g_;
  int64_t max_lanes_;
  Scratch<T> rows_a_, y_;
};

// dZ = A dY A^T for the 4x4 blocks of one channel of several images' grad_y planes at once (zeros
// past the plane where the last tiles hang over it: the forward computed those outputs and dropped
// them), their tiles side by side in the passes' lanes.
template <typename T>
class GradientTransform {
 public:
  GradientTransform(const TileGrid& g, int64_t max_images)
      : g_(g),
        max_lanes_(max_images * g.tiles()),
        padded_(scratch<T>(kOut * g.tiles_h * kOut * g.tiles_w)),
        blocks_(scratch<T>(kOut * kOut * max_lanes_)),
        rows_a_(scratch<T>(kTile * kOut * max_lanes_)) {
    std::fill(padded_.get(), padded_.get() + kOut * g.tiles_h * kOut * g.tiles_w, T(0));
  }

  // Writes position xi of image k's tile t to z[xi * stride + k * tiles + t], for k < count <=
  // max_images, image k's plane at planes + k * image_stride.
  void operator()(const T* planes, int64_t image_stride, int64_t count, T* z, int64_t stride) {
    for (int64_t k = 0; k < count; ++k) {
      prefetch_plane(k + 1 < count ? planes + (k + 1) * image_stride : planes + g_.out_plane(), g_.out_plane());
      split(planes + k * image_stride, k * g_.tiles());
    }
    const int64_t lanes = count * g_.tiles();
    for (int j = 0; j < kOut; ++j) {  // A dY, column j
      const T* in_rows[kOut];
      T* out[kTile];
      for (int r = 0; r < kOut; ++r) in_rows[r] = block(r, j);
      for (int i = 0; i < kTile; ++i) out[i] = rows_a(i, j);
      apply_matrix<Minimal::A>(in_rows, out, lanes);
    }
    for (int i = 0; i < kTile; ++i) {  // (A dY) A^T, row i
      const T* in_rows[kOut];
      T* out[kTile];
      for (int c = 0; c < kOut; ++c) in_rows[c] = rows_a(i, c);
      for (int j = 0; j < kTile; ++j) out[j] = z + (i * kTile + j) * stride;
      apply_matrix<Minimal::A>(in_rows, out, lanes);
    }
  }

 private:
  T* block(int r, int c) { return blocks_.get() + (r * kOut + c) * max_lanes_; }   // dY[r][c]
  T* rows_a(int i, int c) { return rows_a_.get() + (i * kOut + c) * max_lanes_; }  // (A dY)[i][c]

  // One plane's blocks' values by position: dY[r][c] of tile (th, t) at block(r, c)[first +
  // th * tiles_w + t], from the plane copied whole into the zeros of padded_ (copy_plane; copied and
  // gathered row by row, 32 -> 32 at 15x15's weight gradient spent 20% of its time in this transform).
  void split(const T* plane, int64_t first) {
    const int64_t width = kOut * g_.tiles_w;
    T* padded = padded_.get();
    copy_plane(plane, g_.out_h, g_.out_w, padded, width);
    for (int64_t th = 0; th < g_.tiles_h; ++th)
      for (int r = 0; r < kOut; ++r) {
        T* columns[kOut];
        for (int c = 0; c < kOut; ++c) columns[c] = block(r, c) + first + th * g_.tiles_w;
        by_phase(padded + (kOut * th + r) * width, g_.tiles_w, columns);
      }
  }

  const TileGrid& g_;
  int64_t max_lanes_;
  Scratch<T> padded_, blocks_, rows_a_;  // padded_: a plane inside zeros up to whole tiles
};

// u [36, outs, ins]: u[xi][o][i] = (G g G^T)[xi] for each 3x3 filter g of w [Cout, Cin, 3, 3]:
// g = w[o][i] for the forward convolution (outs = Cout, ins = Cin), or for grad_x's (`flipped`:
// outs = Cin, ins = Cout) w[i][o] turned by 180 degrees.
template <typename T>
Scratch<T> transformed_filters(const Tensor& w, bool flipped) {
  const int64_t cout = w.size(0), cin = w.size(1), outs = flipped ? cin : cout, ins = flipped ? cout : cin;
  const T* pw = w.data<T>();
  const auto& G = Minimal::G;
  auto u = scratch<T>(kPositions * outs * ins);
  // Threaded like the products: run on one thread, the transforms of a layer's 64 x 64 filters
  // (and the weight gradient's inverse transform below) left the second thread waiting for about a
  // tenth of the 64 -> 64 layer's forward and backward at 7x7.
  // One output channel's transforms go to a buffer first, [36][ins], then to u a row of ins per
  // position: written straight into u, each filter's 36 values landed outs x ins floats apart (36
  // cache lines and pages per filter), a tenth of the 64 -> 64 layer's fwd+bwd at 7x7.
  parallel_for(outs, outs * ins * kPositions >= kParallelGrain, [&](int64_t o) {
    const auto rows = scratch<T>(kPositions * ins);
    for (int64_t i = 0; i < ins; ++i) {
      const T* filter = pw + (flipped ? i * cin + o : o * cin + i) * 9;
      std::array<T, 9> g;
      if (flipped)
        std::reverse_copy(filter, filter + 9, g.begin());
      else
        std::copy(filter, filter + 9, g.begin());
      double gg[kTile][3];  // G g
      for (int r = 0; r < kTile; ++r)
        for (int c = 0; c < 3; ++c) gg[r][c] = G[r][0] * g[c] + G[r][1] * g[3 + c] + G[r][2] * g[6 + c];
      for (int r = 0; r < kTile; ++r)
        for (int c = 0; c < kTile; ++c)  // (G g) G^T
          rows[(r * kTile + c) * ins + i] =
              static_cast<T>(gg[r][0] * G[c][0] + gg[r][1] * G[c][1] + gg[r][2] * G[c][2]);
    }
    for (int64_t xi = 0; xi < kPositions; ++xi)
      std::copy(rows.get() + xi * ins, rows.get() + (xi + 1) * ins, u.get() + (xi * outs + o) * ins);
  });
  return u;
}

// The tiles of `count` images' planes (`channels` planes of `plane` values each, from `images`)
// transformed into the columns of positions' matrices, a channel at a time: plane c of image k goes
// to columns [k tiles, (k + 1) tiles) of row c, dst[xi * stride + c * count * tiles + k * tiles + t].
template <typename T, typename Transform>
void transform_channels(Transform& transform, const T* images, int64_t count, int64_t channels, int64_t plane,
                        int64_t tiles, T* dst, int64_t stride) {
  for (int64_t c = 0; c < channels; ++c)
    transform(images + c * plane, channels * plane, count, dst + c * count * tiles, stride);
}

// y [batch, outs, out_h, out_w] = the convolution of x [batch, ins, height, width] with the
// filters transformed in u [36, outs, ins], plus bias (or none).
template <typename T>
void convolve(const T* x, int64_t batch, int64_t ins, const TileGrid& g, const T* u, int64_t outs, const T* bias,
              T* y) {
  const ConvPlan plan = plan_groups(batch, g.tiles(), target_tiles(kPositions, ins + outs, sizeof(T)));
  const int64_t tiles = g.tiles(), max_columns = plan.images_per_group * tiles;
  parallel_for(plan.teams, plan.teams > 1, [&](int64_t team) {
    InputTransform<T> input(g, plan.images_per_group);
    OutputTransform<T> output(g, plan.images_per_group);
    const int64_t v_stride = position_stride<T>(ins * max_columns), m_stride = position_stride<T>(outs * max_columns);
    auto v = scratch<T>(kPositions * v_stride), m = scratch<T>(kPositions * m_stride);
    for (int64_t group = plan.group_begin(team); group < plan.group_end(team); ++group) {
      const int64_t first = group * plan.images_per_group;
      const int64_t count = std::min(plan.images_per_group, batch - first), n = count * tiles;
      transform_channels(input, x + first * ins * g.in_plane(), count, ins, g.in_plane(), tiles, v.get(), v_stride);
      for (int64_t xi = 0; xi < kPositions; ++xi)
        gemm<T>(false, false, outs, n, ins, u + xi * outs * ins, ins, v.get() + xi * v_stride, n, T(0),
                m.get() + xi * m_stride, n);
      for (int64_t c = 0; c < outs; ++c)
        output(m.get() + c * n, m_stride, count, bias ? bias[c] : T(0), y + (first * outs + c) * g.out_plane(),
               outs * g.out_plane());
    }
  });
}

// The weight gradient sums over the batch in at most this many chunks of images, each into its own
// dU, which the threads share out; the chunks' sums are added in chunk order. The groups (as many
// images as fill a group's buffers) and the chunks follow the shape alone, so the gradient does not
// depend on the thread count. (With one partial sum per thread, as the forward's teams, one and two
// threads rounded the CNN's weight gradients apart, its only ones to differ.) Four keeps the extra
// sums cheap on one thread and fills two or four; threads past the fourth wait here.
constexpr int64_t kMostGradientChunks = 4;

// grad_w [outs, ins, 3, 3] of the convolution of x by the grid g, from grad_y [batch, outs, out_h, out_w].
template <typename T>
void filter_gradient(const T* x, const T* grad_y, int64_t batch, int64_t ins, int64_t outs, const TileGrid& g,
                     T* grad_w) {
  const int64_t tiles = g.tiles(), positions_size = outs * ins;
  const ConvPlan plan = plan_groups(batch, tiles, target_tiles(kPositions, ins + outs, sizeof(T)), 1);
  const int64_t images_per_group = plan.images_per_group, groups = plan.groups;
  const int64_t chunks = std::max<int64_t>(1, std::min(groups, kMostGradientChunks));
  const int64_t max_columns = images_per_group * tiles;
  std::vector<Scratch<T>> partial(chunks);
  parallel_for(chunks, chunks > 1, [&](int64_t chunk) {
    partial[chunk] = scratch<T>(kPositions * positions_size);
    T* du = partial[chunk].get();
    std::fill(du, du + kPositions * positions_size, T(0));
    InputTransform<T> input(g, images_per_group);
    GradientTransform<T> gradient(g, images_per_group);
    const int64_t v_stride = position_stride<T>(ins * max_columns), dz_stride = position_stride<T>(outs * max_columns);
    auto v = scratch<T>(kPositions * v_stride), dz = scratch<T>(kPositions * dz_stride);
    for (int64_t group = groups * chunk / chunks; group < groups * (chunk + 1) / chunks; ++group) {
      const int64_t first = group * images_per_group;
      const int64_t count = std::min(images_per_group, batch - first), n = count * tiles;
      transform_channels(input, x + first * ins * g.in_plane(), count, ins, g.in_plane(), tiles, v.get(), v_stride);
      transform_channels(gradient, grad_y + first * outs * g.out_plane(), count, outs, g.out_plane(), tiles, dz.get(),
                         dz_stride);
      for (int64_t xi = 0; xi < kPositions; ++xi)  // dU_xi += dZ_xi @ V_xi^T
        gemm<T>(false, true, outs, ins, n, dz.get() + xi * dz_stride, n, v.get() + xi * v_stride, n, T(1),
                du + xi * positions_size, ins);
    }
  });
  // The chunks' sums added into the first, in chunk order, position by position: read across the
  // chunks for each weight instead, 4 x 36 values 16 KB apart per weight thrashed the L1 (64 -> 64 at
  // 7x7, one thread: 4.8 -> 6.2-9.3 ms).
  T* du_total = partial[0].get();
  parallel_for(kPositions, chunks > 1 && positions_size * kPositions * chunks >= kParallelGrain, [&](int64_t xi) {
    T* total = du_total + xi * positions_size;
    for (int64_t chunk = 1; chunk < chunks; ++chunk) {
      const T* part = partial[chunk].get() + xi * positions_size;
#pragma omp simd
      for (int64_t p = 0; p < positions_size; ++p) total[p] += part[p];
    }
  });
  parallel_for(positions_size, positions_size * kPositions >= kParallelGrain, [&](int64_t p) {  // grad_w = G^T dU G
    double du[kTile][kTile];
    for (int64_t xi = 0; xi < kPositions; ++xi) du[xi / kTile][xi % kTile] = du_total[xi * positions_size + p];
    for (int r = 0; r < 3; ++r)
      for (int c = 0; c < 3; ++c) {
        double sum = 0;
        for (int a = 0; a < kTile; ++a)
          for (int b = 0; b < kTile; ++b) sum += Minimal::G[a][r] * du[a][b] * Minimal::G[b][c];
        grad_w[p * 9 + 3 * r + c] = static_cast<T>(sum);
      }
  });
}

template <typename T>
void forward(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& y, Conv2dParams p) {
  const auto u = transformed_filters<T>(w, false);
  convolve<T>(x.data<T>(), x.size(0), w.size(1), TileGrid(x.size(2), x.size(3), p.pad_h, p.pad_w), u.get(),
              w.size(0), bias.defined() ? bias.data<T>() : nullptr, y.data<T>());
}

template <typename T>
void backward(const Tensor& grad_y, const Tensor& x, const Tensor& w, const Tensor& grad_x, const Tensor& grad_w,
              Conv2dParams p) {
  const int64_t outs = w.size(0), ins = w.size(1), batch = x.size(0);
  const TileGrid forward_grid(x.size(2), x.size(3), p.pad_h, p.pad_w);
  if (grad_x.defined()) {
    // grad_x[i] = sum over o of grad_y[o] convolved with filter (o, i) turned by 180 degrees, padded 2 - pad.
    const auto u = transformed_filters<T>(w, true);
    const TileGrid grid(forward_grid.out_h, forward_grid.out_w, 2 - p.pad_h, 2 - p.pad_w);
    convolve<T>(grad_y.data<T>(), batch, outs, grid, u.get(), ins, nullptr, grad_x.data<T>());
  }
  if (grad_w.defined())
    filter_gradient<T>(x.data<T>(), grad_y.data<T>(), batch, ins, outs, forward_grid, grad_w.data<T>());
}

// Winograd's path pays off at up to 3.5 multiply-adds per output (im2col: 9). Measured on the
// CNN's layers, one thread: 1.1-2.1x faster in each pass at 31x31, 15x15 and 7x7 outputs (2.4,
// 2.6 and 2.9 per output), 10-30% slower at 3x3 (4.0: one tile per image, most of it padding).
constexpr double kMostProductsPerOutput = 3.5;

}  // namespace

bool winograd_applies(const Tensor& x, const Tensor& w, Conv2dParams p) {
  const auto padding_fits = [](int64_t pad) { return pad >= 0 && pad <= 2; };
  return (x.dtype() == DType::Float32 || x.dtype() == DType::Float64) && w.size(2) == 3 && w.size(3) == 3 &&
         p.stride_h == 1 && p.stride_w == 1 && padding_fits(p.pad_h) && padding_fits(p.pad_w) &&
         x.size(2) + 2 * p.pad_h >= 3 && x.size(3) + 2 * p.pad_w >= 3;
}

bool winograd_pays_off(const Tensor& x, const Tensor& w, Conv2dParams p) {
  return winograd_applies(x, w, p) &&
         TileGrid(x.size(2), x.size(3), p.pad_h, p.pad_w).products_per_output() <= kMostProductsPerOutput;
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
