// Internals shared by the CUDA kernel files: error checking, launch shapes and
// strided indexing. Not included by C++ code.
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <array>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "framework/backend.h"
#include "framework/backends/dispatch.h"

namespace ml::cuda_detail {

// Every CUDA/cuBLAS/cuDNN call goes through these, so a failure names the call and the kernel.
inline void check(cudaError_t status, const char* call, const char* where) {
  if (status != cudaSuccess)
    throw std::runtime_error(std::string("CUDA error in ") + where + " (" + call + "): " + cudaGetErrorString(status));
}
inline void check(cublasStatus_t status, const char* call, const char* where) {
  if (status != CUBLAS_STATUS_SUCCESS)
    throw std::runtime_error(std::string("cuBLAS error in ") + where + " (" + call + "): status " +
                             std::to_string(static_cast<int>(status)));
}
#define ML_CUDA_CHECK(call, where) ::ml::cuda_detail::check((call), #call, where)
// After a kernel launch: reports launch-configuration errors at once (execution errors surface
// at the next synchronizing call).
#define ML_CUDA_LAUNCHED(where) ML_CUDA_CHECK(cudaGetLastError(), where)

cudaStream_t stream();
cublasHandle_t cublas();
// Scratch memory from the backend's caching allocator, released when the tensor goes out of scope.
Tensor workspace(size_t bytes, Device device);

// cuBLAS and cuDNN take sizes, leading dimensions and batch counts as int: a larger value is
// rejected with its name rather than wrapped into a wrong (or negative) size.
inline int checked_int(int64_t value, const char* what, const char* where) {
  if (value < 0 || value > 2147483647)
    throw std::invalid_argument(std::string(where) + ": " + what + " = " + std::to_string(value) +
                                " does not fit the int the CUDA library takes");
  return static_cast<int>(value);
}

constexpr int kThreads = 256;
inline unsigned blocks_for(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(b < 65535 * 8 ? (b > 0 ? b : 1) : 65535 * 8);  // grid-stride loops cover the rest
}

// Row kernels (softmax, norms, cross-entropy, row reductions) run one block per row and take
// blockIdx.x as the row, so the whole tensor goes in one launch: the grid's x dimension allows
// 2^31 - 1 blocks. (Launching in slices of 65,535 rows with offset pointers once made blockIdx.x
// the row within a slice, which shifted causal softmax's mask past the first slice.)
template <typename Launch>
void launch_rows(int64_t rows, const char* where, Launch launch) {
  if (rows == 0) return;  // an empty grid is an invalid launch
  if (rows > 2147483647)
    throw std::invalid_argument(std::string(where) + ": " + std::to_string(rows) +
                                " rows exceed the CUDA grid's 2^31 - 1 blocks");
  launch(static_cast<unsigned>(rows));
  ML_CUDA_LAUNCHED(where);
}

// The type row kernels (softmax, layer/RMS norm, cross-entropy) accumulate a row's sums and maxima
// in: the tensor's own type. Double arithmetic, exp and log above all, runs 10-30x slower than
// float on consumer GPUs, and a float32 row summed per thread and then in a warp-shuffle tree
// loses only a few float roundings (far below the parity suite's tolerance against the CPU's
// double sums). Float64 tensors keep double.
template <typename T>
struct RowAccumulatorOf {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "row kernels take float32 or float64");
  using type = T;
};
template <typename T>
using RowAccumulator = typename RowAccumulatorOf<T>::type;

// Combines one value per thread over the block (blockDim.x a multiple of 32, at most 1024) and
// gives every thread the result: a butterfly of warp shuffles, then each thread combines the
// warps' results from `scratch` (one entry per warp) in warp order. Both steps combine in a fixed
// order, so the result is the same on every run.
template <typename Acc, typename Combine>
__device__ Acc block_reduce(Acc v, Acc* scratch, Combine combine) {
  for (int offset = 16; offset > 0; offset >>= 1) v = combine(v, __shfl_xor_sync(0xffffffff, v, offset));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  Acc total = scratch[0];
  for (int w = 1; w < blockDim.x / 32; ++w) total = combine(total, scratch[w]);
  return total;
}
template <typename Acc>
__device__ Acc block_sum(Acc v, Acc* scratch) {
  return block_reduce(v, scratch, [](Acc a, Acc b) { return a + b; });
}
template <typename Acc>
__device__ Acc block_max(Acc v, Acc* scratch) {
  return block_reduce(v, scratch, [](Acc a, Acc b) { return fmax(a, b); });
}

constexpr int kMaxDims = 8;

// Shapes and strides of N same-shaped operands, passed to kernels by value.
template <int N>
struct StridedLayout {
  int ndim = 0;
  int64_t sizes[kMaxDims] = {};
  int64_t strides[N][kMaxDims] = {};
  bool contiguous = true;

  __device__ void offsets(int64_t linear, int64_t (&out)[N]) const {
    for (int k = 0; k < N; ++k) out[k] = contiguous ? linear : 0;
    if (contiguous) return;
    for (int d = ndim - 1; d >= 0; --d) {
      const int64_t i = linear % sizes[d];
      linear /= sizes[d];
      for (int k = 0; k < N; ++k) out[k] += i * strides[k][d];
    }
  }
};

template <int N>
StridedLayout<N> layout_of(const std::array<const Tensor*, N>& tensors) {
  StridedLayout<N> layout;
  const Tensor& first = *tensors[0];
  if (first.dim() > kMaxDims)
    throw std::invalid_argument("cuda: tensors of more than " + std::to_string(kMaxDims) + " dims are not supported");
  layout.ndim = static_cast<int>(first.dim());
  for (int d = 0; d < layout.ndim; ++d) layout.sizes[d] = first.shape()[d];
  for (int k = 0; k < N; ++k) {
    layout.contiguous = layout.contiguous && tensors[k]->is_contiguous();
    for (int d = 0; d < layout.ndim; ++d) layout.strides[k][d] = tensors[k]->strides()[d];
  }
  return layout;
}

// Index checks without a host round trip. Kernels that read indices check each one on the
// device; a bad one is skipped (what it would read is 0, what it would write is dropped) and the
// first of them is recorded in page-locked host memory mapped into the device's address space.
// Every stream synchronization (copy_to_host, synchronize; copies to the device do not wait)
// then reads the record, with no copy of its own, and throws: like CUDA's own execution errors,
// a bad index or label surfaces at the next synchronizing call, not at the op that used it.
enum class IndexUse : int64_t { None, IndexSelect, IndexAdd, Gather, ScatterAdd, CrossEntropyTarget };
struct BadIndex {
  IndexUse use;  // None until a kernel records a bad index
  int64_t value;
  int64_t bound;
};
struct BadIndexSlot {
  int* claimed;      // device memory: 0 until one thread claims the record
  BadIndex* record;  // pinned host memory; with unified addressing (every 64-bit process) kernels
                     // reach it through the same pointer
};
const BadIndexSlot& bad_index_slot();

// Whether 0 <= value < bound; otherwise the first such value since the last report is recorded
// for `use`. The atomic claim gives the record exactly one writer.
__device__ inline bool index_in_range(int64_t value, int64_t bound, IndexUse use, const BadIndexSlot& slot) {
  if (value >= 0 && value < bound) return true;
  if (atomicCAS(slot.claimed, 0, 1) == 0) {
    slot.record->value = value;
    slot.record->bound = bound;
    __threadfence_system();
    slot.record->use = use;  // last, so that a set `use` implies value and bound are visible
  }
  return false;
}

template <typename T>
T* ptr(const Tensor& t) {
  return static_cast<T*>(t.raw_data());
}

// out[targets[i]] += src[i] for each of the targets.numel() contributions; a target of out_size
// skips its contribution (a bad index). Under cuda_deterministic() every element adds its
// contributions in increasing i (a stable sort by target, then one thread per target), so the
// result does not depend on thread timing; otherwise with atomics. float and double (cuda_index.cu).
template <typename T>
void add_at(T* out, int64_t out_size, const Tensor& targets, const T* src, const char* where);

}  // namespace ml::cuda_detail
