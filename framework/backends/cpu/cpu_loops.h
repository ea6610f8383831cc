// Loop helpers shared by the CPU kernels: strided elementwise iteration.
#pragma once
#include <omp.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>

#include "framework/backends/cpu/cpu_capability.h"
#include "framework/backends/dispatch.h"
#include "framework/tensor.h"

namespace ml::cpu_loops {

// Below this many elements a loop runs on one thread: spawning costs more than it saves.
constexpr int64_t kParallelGrain = 32768;

// Whether a loop that is worth splitting (`parallel`) has more than one thread to split over.
// When not, loops run outside OpenMP: libgomp enters a region even for `if (false)` or a team of
// one, which on this project's VMs costs about 2.8 us per call (it makes futex system calls),
// some thirty times a small op's whole work (a clamp of 256 floats takes 0.1 us).
inline bool use_threads(bool parallel) { return parallel && omp_get_max_threads() > 1; }

// body(i) for i in [0, n): spread over the thread team with a static schedule when
// use_threads(parallel), else a plain loop on the calling thread. Each i is handled alike either
// way, so results are the same. A body may call BLAS: inside the team each call runs
// single-threaded (the OpenMP build of OpenBLAS does not spawn threads in an active region), and
// outside it OpenBLAS can use every thread. (Within `#pragma omp parallel if (false)`, OpenBLAS's
// region would be nested in an inactive one, and libgomp starts and joins fresh threads for every
// such call: thousands per training step, at several microseconds each.)
template <typename Body>
void parallel_for(int64_t n, bool parallel, Body&& body) {
  if (!use_threads(parallel)) {
    for (int64_t i = 0; i < n; ++i) body(i);
    return;
  }
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) body(i);
}

// sum_j term_k(j) for each k < K over j < n, where terms(j, term) sets term[k] = term_k(j), in kLanes
// independent partial sums of T per k, added up in double. One running double sum (`omp simd
// reduction`) waits on each add before the next; the lanes pipeline and vectorize, and float lanes
// skip the conversions: 0.65-0.75x the time of one double sum for sums of squares on rows of
// 768-3072 already in cache, about half for the convolution bias gradient of the CNN's stem (which
// then waits on memory). Several sums of one row in one pass read it once (layer norm's backward
// takes two). Each lane adds n / 32 terms, so a float32 sum of terms of one sign stays within about
// 1e-6 (relative) of the exact one. The last n % 32 terms go into the first lanes, also as vector
// code: rows shorter than 32 (causal attention's first rows) are all remainder, which a scalar loop
// summed at a few times the cost.
template <typename T, size_t K, typename Terms>
std::array<double, K> sums_in_lanes(int64_t n, Terms&& terms) {
  constexpr int64_t kLanes = 32;
  T partial[K][kLanes] = {};
  // The terms come through an array argument: returned in a std::array, GCC left the loops scalar.
  const auto add_terms = [&](int64_t j, int64_t lane) {
    T term[K];
    terms(j + lane, term);
    for (size_t k = 0; k < K; ++k) partial[k][lane] += term[k];
  };
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
#pragma omp simd
    for (int64_t lane = 0; lane < kLanes; ++lane) add_terms(j, lane);
  const int64_t rest = n - j;
#pragma omp simd
  for (int64_t lane = 0; lane < rest; ++lane) add_terms(j, lane);
  // In vector registers too: one lane after another, this chain of 32 conversions and dependent
  // additions cost more than summing a short row itself.
  std::array<double, K> sums{};
  for (size_t k = 0; k < K; ++k) {
    double sum = 0.0;
#pragma omp simd reduction(+ : sum)
    for (int64_t lane = 0; lane < kLanes; ++lane) sum += partial[k][lane];
    sums[k] = sum;
  }
  return sums;
}

// sums_in_lanes of one term per j.
template <typename T, typename Term>
double sum_in_lanes(int64_t n, Term&& term) {
  return sums_in_lanes<T, 1>(n, [&](int64_t j, T(&terms)[1]) { terms[0] = term(j); })[0];
}

// ---- One 64-byte vector of T as a GCC vector type (a zmm register in run_widest's AVX-512 copy,
// two ymm in the AVX2 one), and the lane indices of a shuffle of it: for kernels that keep values in
// registers by construction rather than by the vectorizer's choice.
template <typename T>
struct Vector64;
template <>
struct Vector64<float> {
  typedef float type __attribute__((vector_size(64)));
  typedef int32_t indices __attribute__((vector_size(64)));
};
template <>
struct Vector64<double> {
  typedef double type __attribute__((vector_size(64)));
  typedef int64_t indices __attribute__((vector_size(64)));
};

// The elements of T in one such vector.
template <typename T>
constexpr int64_t kVector = 64 / sizeof(T);

// ---- The widest vectors the processor has (cpu_capability.h)

// Whether run_widest should take the AVX-512 copy. Read it before a parallel region: the first
// call may throw (a bad MUONLAB_CPU_CAPABILITY), and an exception must not escape the region.
inline bool widest_is_avx512() { return cpu_capability() == CpuCapability::Avx512; }

#if defined(__x86_64__) && !defined(__AVX512F__)
// loop(args...) compiled for x86-64-v4: flatten inlines the loop and everything it calls into
// this copy, so all of it is AVX-512 code, while the loop's own instantiation (and every shared
// inline function) stays at the build's level: nothing AVX-512 can run where it is not chosen.
template <typename Loop, typename... Args>
__attribute__((flatten, target("arch=x86-64-v4"))) void run_avx512(Loop& loop, Args... args) {
  loop(args...);
}
#endif

// loop(args...), in its AVX-512 copy when `avx512` (from widest_is_avx512()). The two copies do the
// same arithmetic in the same order per element; only sums whose order follows the vector width
// (an `omp simd` reduction) can round apart in the last bits.
template <typename Loop, typename... Args>
void run_widest(bool avx512, Loop& loop, Args... args) {
#if defined(__x86_64__) && !defined(__AVX512F__)
  if (avx512) return run_avx512(loop, args...);
#else
  (void)avx512;
#endif
  loop(args...);
}

// range(begin, end) over [0, n): one contiguous block per thread, its start a multiple of `unit`,
// when use_threads(parallel); else one call on the calling thread.
template <typename Range>
void block_per_thread(int64_t n, int64_t unit, bool parallel, Range&& range) {
  if (!use_threads(parallel)) return range(int64_t{0}, n);
#pragma omp parallel
  {
    const int64_t threads = omp_get_num_threads(), thread = omp_get_thread_num();
    const int64_t per_thread = ((n + threads - 1) / threads + unit - 1) / unit * unit;
    range(std::min(n, thread * per_thread), std::min(n, (thread + 1) * per_thread));
  }
}

// range(begin, end) over [0, n) in run_widest's copy: one contiguous block per thread, its start a
// multiple of `unit` elements, when use_threads(parallel); else one call on the calling thread.
template <typename Range>
void widest_block_per_thread(int64_t n, int64_t unit, bool parallel, Range& range) {
  const bool avx512 = widest_is_avx512();
  block_per_thread(n, unit, parallel, [&](int64_t begin, int64_t end) { run_widest(avx512, range, begin, end); });
}

// parallel_for whose bodies run in run_widest's copy: for loops whose cost is arithmetic per
// element. Each thread takes one contiguous block of [0, n).
template <typename Body>
void parallel_for_widest(int64_t n, bool parallel, Body&& body) {
  auto range = [&](int64_t begin, int64_t end) __attribute__((flatten)) {
    for (int64_t i = begin; i < end; ++i) body(i);
  };
  widest_block_per_thread(n, 1, parallel, range);
}

// The innermost rows of N same-shaped views (strides may be 0 for broadcast operands). Dimensions
// that are contiguous across all operands are merged first, so a contiguous or simply-broadcast
// operand costs one flat inner row. Every row has the same length and each operand the same stride
// along it (steps()); walk() gives each operand's element offset at a row's start (relative to its
// data pointer).
template <size_t N>
class RowWalk {
 public:
  RowWalk(const Shape& shape, const std::array<const Shape*, N>& strides) {
    for (size_t d = 0; d < shape.size(); ++d) {
      if (shape[d] == 1) continue;
      bool mergeable = !dims_.empty();
      for (size_t k = 0; k < N && mergeable; ++k) mergeable = strides_[k].back() == (*strides[k])[d] * shape[d];
      if (mergeable) {
        dims_.back() *= shape[d];
        for (size_t k = 0; k < N; ++k) strides_[k].back() = (*strides[k])[d];
      } else {
        dims_.push_back(shape[d]);
        for (size_t k = 0; k < N; ++k) strides_[k].push_back((*strides[k])[d]);
      }
    }
    if (dims_.empty()) {  // a single element: one row of one
      dims_.push_back(1);
      for (size_t k = 0; k < N; ++k) strides_[k].push_back(0);
    }
    length_ = dims_.back();
    for (size_t d = 0; d + 1 < dims_.size(); ++d) rows_ *= dims_[d];
    for (size_t k = 0; k < N; ++k) steps_[k] = strides_[k].back();
  }

  int64_t rows() const { return rows_; }
  int64_t length() const { return length_; }
  const std::array<int64_t, N>& steps() const { return steps_; }

  // row(offsets) for the rows [begin, end), in order: the first row's index is split into the outer
  // dimensions' indices, then carried forward like an odometer.
  template <typename Row>
  void walk(int64_t begin, int64_t end, Row&& row) const {
    if (begin >= end) return;
    const int outer = static_cast<int>(dims_.size()) - 1;
    std::array<int64_t, N> offsets{};
    Shape index(static_cast<size_t>(outer));
    int64_t rest = begin;
    for (int d = outer - 1; d >= 0; --d) {
      index[d] = rest % dims_[d];
      rest /= dims_[d];
      for (size_t k = 0; k < N; ++k) offsets[k] += index[d] * strides_[k][d];
    }
    for (int64_t r = begin;;) {
      row(offsets);
      if (++r == end) return;
      for (int d = outer - 1;; --d) {  // the next row: carry into the dimensions above
        for (size_t k = 0; k < N; ++k) offsets[k] += strides_[k][d];
        if (++index[d] < dims_[d]) break;
        for (size_t k = 0; k < N; ++k) offsets[k] -= dims_[d] * strides_[k][d];
        index[d] = 0;
      }
    }
  }

  // Whether the rows are worth splitting over threads.
  bool parallel() const { return rows_ > 1 && rows_ * length_ >= kParallelGrain; }

  // walk() over every row, the rows split over the threads in contiguous blocks where parallel().
  template <typename Row>
  void walk_all(Row&& row) const {
    block_per_thread(rows_, 1, parallel(), [&](int64_t begin, int64_t end) { walk(begin, end, row); });
  }

 private:
  Shape dims_;
  std::array<Shape, N> strides_;
  int64_t length_ = 1, rows_ = 1;
  std::array<int64_t, N> steps_{};
};

// row_body(offsets, length, steps) for every innermost row of N same-shaped views (RowWalk), the
// rows split over the threads in contiguous blocks.
template <size_t N, typename RowBody>
void for_each_row(const Shape& shape, const std::array<const Shape*, N>& strides, RowBody&& row_body) {
  const RowWalk<N> rows(shape, strides);
  rows.walk_all([&](const std::array<int64_t, N>& offsets) { row_body(offsets, rows.length(), rows.steps()); });
}

// body(offsets) for every element of N same-shaped views, as for_each_row walks them.
template <size_t N, typename Body>
void for_each_offset(const Shape& shape, const std::array<const Shape*, N>& strides, Body&& body) {
  for_each_row(shape, strides, [&](std::array<int64_t, N> off, int64_t length, const std::array<int64_t, N>& steps) {
    for (int64_t j = 0; j < length; ++j) {
      body(off);
      for (size_t k = 0; k < N; ++k) off[k] += steps[k];
    }
  });
}

namespace detail {

// One row of map_elements whose output is contiguous and whose inputs each step by 1 (bit I of
// Contiguous set) or 0 (a broadcast value): with the steps known at compile time the loop
// vectorizes like the all-contiguous case. (flatten: see map_elements_impl.)
template <int Contiguous, typename T, typename F, size_t... I>
__attribute__((flatten)) void map_row(T* dst, const std::array<const T*, sizeof...(I)>& from, int64_t length, F& f, std::index_sequence<I...>) {
#pragma omp simd
  for (int64_t j = 0; j < length; ++j) dst[j] = f(from[I][((Contiguous >> I) & 1) ? j : 0]...);
}

// body(std::integral_constant<int, contiguous>) for the input pattern `contiguous` (a bit per
// input), chosen among the 2^inputs instantiations.
template <int Candidate, size_t Inputs, typename Body>
void with_pattern(int contiguous, Body&& body) {
  if (contiguous == Candidate) return body(std::integral_constant<int, Candidate>{});
  if constexpr (Candidate + 1 < (1 << Inputs)) with_pattern<Candidate + 1, Inputs>(contiguous, body);
}

}  // namespace detail

// out[i] = f(in[i]...) over same-shaped views of one element type T; the all-contiguous case is
// a flat parallel loop the compiler can vectorize.
template <typename T, typename F, typename... Tensors, size_t... I>
void map_elements_impl(const Tensor& out, F& f, std::index_sequence<I...>, const Tensors&... in) {
  T* o = static_cast<T*>(out.raw_data());
  const std::array<const T*, sizeof...(in)> src{static_cast<const T*>(in.raw_data())...};
  const int64_t n = out.numel();
  if ((out.is_contiguous() && ... && in.is_contiguous())) {
    // One contiguous range per thread (see use_threads for why the serial case stays outside
    // OpenMP), each a vectorized loop over local copies of the pointers: read through shared
    // ones, every iteration would reload them (the stores might alias), which blocks vectorization.
    // flatten inlines f and all it calls into the loop: GCC's inliner gave up on GELU's element
    // math once it grew, and a call per element does not vectorize (the CNN step then slowed).
    auto map_range = [&](int64_t begin, int64_t end) __attribute__((flatten)) {
      T* const dst = o;
      const std::array<const T*, sizeof...(in)> from = src;
#pragma omp simd
      for (int64_t i = begin; i < end; ++i) dst[i] = f(from[I][i]...);
    };
    // Blocks of whole cache lines, so that no two threads write to one line.
    widest_block_per_thread(n, 64 / static_cast<int64_t>(sizeof(T)), n >= kParallelGrain, map_range);
    return;
  }
  constexpr size_t inputs = sizeof...(in);
  const RowWalk<1 + inputs> rows(out.shape(), {&out.strides(), &in.strides()...});
  const std::array<int64_t, 1 + inputs>& steps = rows.steps();
  // Rows with a contiguous output and inputs that are contiguous or broadcast along them (a per-row
  // scale, a bias): the vectorized loop, its pattern chosen once for all rows, each thread's rows
  // walked inside run_widest's copy. (Entered row by row, the call into that copy and the choice of
  // pattern cost more than a row of 32 floats: the GPT's heads, split from its packed qkv, took
  // 8.5 ns a row in cache, now 3-4.) Other strides: one element at a time.
  bool unit_or_broadcast = steps[0] == 1;
  int contiguous = 0;
  for (size_t k = 0; k < inputs; ++k) {
    unit_or_broadcast = unit_or_broadcast && (steps[k + 1] == 0 || steps[k + 1] == 1);
    contiguous |= (steps[k + 1] == 1 ? 1 : 0) << k;
  }
  if (unit_or_broadcast) {
    auto row_range = [&](int64_t begin, int64_t end) {
      detail::with_pattern<0, inputs>(contiguous, [&](auto pattern) {
        rows.walk(begin, end, [&](const auto& off) {
          const std::array<const T*, inputs> from{(src[I] + off[I + 1])...};
          detail::map_row<decltype(pattern)::value>(o + off[0], from, rows.length(), f, std::index_sequence<I...>{});
        });
      });
    };
    widest_block_per_thread(rows.rows(), 1, rows.parallel(), row_range);
    return;
  }
  rows.walk_all([&](const auto& off) {
    for (int64_t j = 0; j < rows.length(); ++j) o[off[0] + j * steps[0]] = f(src[I][off[I + 1] + j * steps[I + 1]]...);
  });
}

template <typename T, typename F, typename... Tensors>
void map_elements(const Tensor& out, F f, const Tensors&... in) {
  map_elements_impl<T>(out, f, std::index_sequence_for<Tensors...>{}, in...);
}

}  // namespace ml::cpu_loops
