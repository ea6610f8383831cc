// Convolution through cuDNN's legacy (v7-style) API, kept in cuDNN 9: a convolution here is three
// fixed library calls (forward, backward data, backward filter) whose algorithms cuDNN's
// heuristics pick; the v9 graph API would add an operation-graph build per shape for no gain at
// this scale. Pooling and batch normalization are own kernels (same contracts as cpu_conv.cpp).
#include <cudnn.h>

#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>

#include "framework/backends/cuda/cuda_backend.h"
#include "framework/backends/cuda/cuda_backend_impl.cuh"
#include "framework/backends/cuda/cuda_common.cuh"
#include "framework/backends/elementwise_math.h"

namespace ml {
using namespace cuda_detail;

namespace {

void check_cudnn(cudnnStatus_t status, const char* call, const char* where) {
  if (status != CUDNN_STATUS_SUCCESS)
    throw std::runtime_error(std::string("cuDNN error in ") + where + " (" + call + "): " + cudnnGetErrorString(status));
}
#define ML_CUDNN_CHECK(call, where) check_cudnn((call), #call, where)

cudnnHandle_t cudnn() {
  static cudnnHandle_t h = [] {
    cudnnHandle_t created;
    ML_CUDNN_CHECK(cudnnCreate(&created), "cudnn");
    ML_CUDNN_CHECK(cudnnSetStream(created, stream()), "cudnn");
    return created;
  }();
  return h;
}

// The descriptors of one convolution, created per call (cheap host-side objects) and destroyed
// with the scope, and the key under which its algorithms are remembered: everything that decides
// which algorithms cuDNN offers and may be used (device, shapes, padding, stride, type, math mode,
// determinism).
struct ConvDescriptors {
  cudnnTensorDescriptor_t x{}, y{}, bias{};
  cudnnFilterDescriptor_t w{};
  cudnnConvolutionDescriptor_t conv{};
  cudnnDataType_t type;
  std::string key;

  ConvDescriptors(const Tensor& x_t, const Tensor& w_t, const Tensor& y_t, Conv2dParams p)
      : type(x_t.dtype() == DType::Float64 ? CUDNN_DATA_DOUBLE : CUDNN_DATA_FLOAT) {
    key = x_t.device().str() + " x" + shape_str(x_t.shape()) + " w" + shape_str(w_t.shape()) + " y" +
          shape_str(y_t.shape()) + " pad " + std::to_string(p.pad_h) + "," + std::to_string(p.pad_w) + " stride " +
          std::to_string(p.stride_h) + "," + std::to_string(p.stride_w) + " " + dtype_name(x_t.dtype()) + " math " +
          std::to_string(int(cuda_matmul_precision())) + (cuda_deterministic() ? " deterministic" : "");
    auto dim = [](const Tensor& t, int d) { return checked_int(t.size(d), "a tensor dim", "conv2d"); };
    ML_CUDNN_CHECK(cudnnCreateTensorDescriptor(&x), "conv2d");
    ML_CUDNN_CHECK(cudnnCreateTensorDescriptor(&y), "conv2d");
    ML_CUDNN_CHECK(cudnnCreateTensorDescriptor(&bias), "conv2d");
    ML_CUDNN_CHECK(cudnnCreateFilterDescriptor(&w), "conv2d");
    ML_CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&conv), "conv2d");
    ML_CUDNN_CHECK(cudnnSetTensor4dDescriptor(x, CUDNN_TENSOR_NCHW, type, dim(x_t, 0), dim(x_t, 1), dim(x_t, 2), dim(x_t, 3)), "conv2d");
    ML_CUDNN_CHECK(cudnnSetTensor4dDescriptor(y, CUDNN_TENSOR_NCHW, type, dim(y_t, 0), dim(y_t, 1), dim(y_t, 2), dim(y_t, 3)), "conv2d");
    ML_CUDNN_CHECK(cudnnSetTensor4dDescriptor(bias, CUDNN_TENSOR_NCHW, type, 1, dim(y_t, 1), 1, 1), "conv2d");
    ML_CUDNN_CHECK(cudnnSetFilter4dDescriptor(w, type, CUDNN_TENSOR_NCHW, dim(w_t, 0), dim(w_t, 1), dim(w_t, 2), dim(w_t, 3)), "conv2d");
    ML_CUDNN_CHECK(cudnnSetConvolution2dDescriptor(conv, checked_int(p.pad_h, "pad_h", "conv2d"),
                                                   checked_int(p.pad_w, "pad_w", "conv2d"),
                                                   checked_int(p.stride_h, "stride_h", "conv2d"),
                                                   checked_int(p.stride_w, "stride_w", "conv2d"), 1, 1,
                                                   CUDNN_CROSS_CORRELATION, type),
                   "conv2d");
    // FMA math is exact float32; tensor-op math lets float32 convolutions use TF32. Bf16 mode
    // convolves with TF32 too: bf16 cuDNN would need bf16 copies of x, w and every output and
    // gradient, while TF32 reads the float32 tensors as they are and gives most of the speed.
    const bool tensor_ops = cuda_matmul_precision() != MatmulPrecision::Float32;
    ML_CUDNN_CHECK(cudnnSetConvolutionMathType(conv, tensor_ops ? CUDNN_TENSOR_OP_MATH : CUDNN_FMA_MATH), "conv2d");
  }
  ~ConvDescriptors() {
    cudnnDestroyTensorDescriptor(x);
    cudnnDestroyTensorDescriptor(y);
    cudnnDestroyTensorDescriptor(bias);
    cudnnDestroyFilterDescriptor(w);
    cudnnDestroyConvolutionDescriptor(conv);
  }
  ConvDescriptors(const ConvDescriptors&) = delete;
  ConvDescriptors& operator=(const ConvDescriptors&) = delete;
};

// cuDNN takes its blend factors (y = alpha * result + beta * y) by pointer, typed like the data:
// double for float64 tensors, float otherwise.
class BlendFactors {
 public:
  explicit BlendFactors(DType dtype) : is_double_(dtype == DType::Float64) {}
  const void* one() const { return is_double_ ? static_cast<const void*>(&one_d_) : &one_f_; }
  const void* zero() const { return is_double_ ? static_cast<const void*>(&zero_d_) : &zero_f_; }

 private:
  bool is_double_;
  double one_d_ = 1.0, zero_d_ = 0.0;
  float one_f_ = 1.0f, zero_f_ = 0.0f;
};

// The workspace a convolution may take: at most half the free device memory, and at most 1 GiB
// (FFT algorithms can ask for far more than the tensors they convolve).
size_t workspace_budget() {
  size_t free_bytes = 0, total_bytes = 0;
  ML_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes), "conv2d workspace");
  return std::min<size_t>(free_bytes / 2, size_t(1) << 30);
}

// The algorithm that last worked for a convolution call, by ConvDescriptors::key and direction.
// cuDNN 9's heuristics query costs far more than the small convolutions it ranks (bench ops on an
// H200: 1.1-1.7 ms per 3x3 convolution of the airbench CNN with the query on every call), so it
// runs once per key, like PyTorch's cache of cuDNN algorithms.
struct ChosenAlgorithm {
  int algo;
  size_t workspace_bytes;
};

class ChosenAlgorithms {
 public:
  std::optional<ChosenAlgorithm> find(const std::string& key) {
    std::lock_guard<std::mutex> lock(mutex_);
    const auto it = chosen_.find(key);
    if (it == chosen_.end()) return std::nullopt;
    return it->second;
  }
  void remember(const std::string& key, ChosenAlgorithm chosen) {
    std::lock_guard<std::mutex> lock(mutex_);
    chosen_[key] = chosen;
  }
  void forget(const std::string& key) {
    std::lock_guard<std::mutex> lock(mutex_);
    chosen_.erase(key);
  }

 private:
  std::mutex mutex_;
  std::unordered_map<std::string, ChosenAlgorithm> chosen_;
};

ChosenAlgorithms& chosen_algorithms() {
  static ChosenAlgorithms chosen;
  return chosen;
}

// Runs `run(algo, workspace, bytes)` with a workspace of `bytes` allocated here; false (and the
// CUDA error cleared) when the workspace cannot be had, else whether cuDNN's call succeeded. The
// failure's reason is appended to `failures`.
template <typename Algo, typename Run>
bool try_algorithm(Algo algo, size_t bytes, Run& run, Device device, std::string& failures) {
  Tensor ws;
  try {
    ws = workspace(bytes, device);
  } catch (const std::exception&) {
    cudaGetLastError();  // clear the allocation failure, so that later checks do not report it
    failures += "; algorithm " + std::to_string(int(algo)) + ": no memory for its workspace";
    return false;
  }
  const cudnnStatus_t status = run(algo, ws.raw_data(), bytes);
  if (status == CUDNN_STATUS_SUCCESS) return true;
  failures += "; algorithm " + std::to_string(int(algo)) + ": " + cudnnGetErrorString(status);
  return false;
}

// Runs one convolution call with the algorithm remembered for its key when there is one, else
// with the algorithms cuDNN's heuristics rank first: the first that works, needs a workspace
// within the budget and, when cuda_deterministic(), is deterministic, which is then remembered.
// Falls back to the next one when the workspace cannot be allocated or the call fails (a
// remembered algorithm that fails is forgotten and the heuristics asked again).
// `bytes_of(algo, &bytes)` gives an algorithm's workspace; `run(algo, workspace, bytes)` runs it.
template <typename Perf, typename Query, typename Bytes, typename Run>
void run_with_algorithm(Query query, Bytes bytes_of, Run run, Device device, const std::string& key,
                        const char* where) {
  using Algo = decltype(Perf::algo);
  const std::string direction_key = key + " " + where;
  std::string failures;
  if (const auto chosen = chosen_algorithms().find(direction_key)) {
    if (try_algorithm(static_cast<Algo>(chosen->algo), chosen->workspace_bytes, run, device, failures)) return;
    chosen_algorithms().forget(direction_key);
  }
  Perf results[16];
  int returned = 0;
  ML_CUDNN_CHECK(query(16, &returned, results), where);
  const size_t budget = workspace_budget();
  const bool deterministic = cuda_deterministic();
  for (int i = 0; i < returned; ++i) {
    const Perf& r = results[i];
    if (r.status != CUDNN_STATUS_SUCCESS || (deterministic && r.determinism != CUDNN_DETERMINISTIC)) continue;
    size_t bytes = 0;
    if (bytes_of(r.algo, &bytes) != CUDNN_STATUS_SUCCESS || bytes > budget) continue;
    if (try_algorithm(r.algo, bytes, run, device, failures)) {
      chosen_algorithms().remember(direction_key, {int(r.algo), bytes});
      return;
    }
  }
  throw std::runtime_error(std::string("cuDNN found no usable algorithm for ") + where + " within a workspace of " +
                           std::to_string(budget >> 20) + " MiB" + (deterministic ? " among deterministic ones" : "") +
                           failures);
}
}  // namespace

void CudaBackend::conv2d(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& y, Conv2dParams p) {
  if (y.numel() == 0) return;  // an empty batch: cuDNN rejects tensors with a zero dim
  ConvDescriptors d(x, w, y, p);
  const BlendFactors factors(x.dtype());
  const void* alpha = factors.one();
  const void* beta = factors.zero();
  run_with_algorithm<cudnnConvolutionFwdAlgoPerf_t>(
      [&](int n, int* got, cudnnConvolutionFwdAlgoPerf_t* r) {
        return cudnnGetConvolutionForwardAlgorithm_v7(cudnn(), d.x, d.w, d.conv, d.y, n, got, r);
      },
      [&](cudnnConvolutionFwdAlgo_t algo, size_t* bytes) {
        return cudnnGetConvolutionForwardWorkspaceSize(cudnn(), d.x, d.w, d.conv, d.y, algo, bytes);
      },
      [&](cudnnConvolutionFwdAlgo_t algo, void* ws, size_t bytes) {
        return cudnnConvolutionForward(cudnn(), alpha, d.x, x.raw_data(), d.w, w.raw_data(), d.conv, algo, ws, bytes,
                                       beta, d.y, y.raw_data());
      },
      x.device(), d.key, "conv2d");
  if (bias.defined())
    ML_CUDNN_CHECK(cudnnAddTensor(cudnn(), alpha, d.bias, bias.raw_data(), alpha, d.y, y.raw_data()), "conv2d");
}

void CudaBackend::conv2d_backward(const Tensor& grad_y, const Tensor& x, const Tensor& w, const Tensor& grad_x,
                                  const Tensor& grad_w, const Tensor& grad_bias, Conv2dParams p) {
  if (grad_y.numel() == 0) {  // an empty batch (cuDNN rejects it): nothing flows back, as on the CPU
    for (const Tensor* g : {&grad_x, &grad_w, &grad_bias})
      if (g->defined()) fill(*g, 0.0);
    return;
  }
  ConvDescriptors d(x, w, grad_y, p);
  const BlendFactors factors(x.dtype());
  const void* alpha = factors.one();
  const void* beta = factors.zero();
  if (grad_x.defined())
    run_with_algorithm<cudnnConvolutionBwdDataAlgoPerf_t>(
        [&](int n, int* got, cudnnConvolutionBwdDataAlgoPerf_t* r) {
          return cudnnGetConvolutionBackwardDataAlgorithm_v7(cudnn(), d.w, d.y, d.conv, d.x, n, got, r);
        },
        [&](cudnnConvolutionBwdDataAlgo_t algo, size_t* bytes) {
          return cudnnGetConvolutionBackwardDataWorkspaceSize(cudnn(), d.w, d.y, d.conv, d.x, algo, bytes);
        },
        [&](cudnnConvolutionBwdDataAlgo_t algo, void* ws, size_t bytes) {
          return cudnnConvolutionBackwardData(cudnn(), alpha, d.w, w.raw_data(), d.y, grad_y.raw_data(), d.conv, algo,
                                              ws, bytes, beta, d.x, grad_x.raw_data());
        },
        x.device(), d.key, "conv2d_backward (data)");
  if (grad_w.defined())
    run_with_algorithm<cudnnConvolutionBwdFilterAlgoPerf_t>(
        [&](int n, int* got, cudnnConvolutionBwdFilterAlgoPerf_t* r) {
          return cudnnGetConvolutionBackwardFilterAlgorithm_v7(cudnn(), d.x, d.y, d.conv, d.w, n, got, r);
        },
        [&](cudnnConvolutionBwdFilterAlgo_t algo, size_t* bytes) {
          return cudnnGetConvolutionBackwardFilterWorkspaceSize(cudnn(), d.x, d.y, d.conv, d.w, algo, bytes);
        },
        [&](cudnnConvolutionBwdFilterAlgo_t algo, void* ws, size_t bytes) {
          return cudnnConvolutionBackwardFilter(cudnn(), alpha, d.x, x.raw_data(), d.y, grad_y.raw_data(), d.conv,
                                                algo, ws, bytes, beta, d.w, grad_w.raw_data());
        },
        x.device(), d.key, "conv2d_backward (filter)");
  if (grad_bias.defined())
    ML_CUDNN_CHECK(cudnnConvolutionBackwardBias(cudnn(), alpha, d.y, grad_y.raw_data(), beta, d.bias, grad_bias.raw_data()),
                   "conv2d_backward");
}

// ------------------------------------------------------------------------------- pooling
namespace {

struct PoolGeometry {
  int64_t planes, height, width, out_h, out_w;
  Pool2dParams p;
};
PoolGeometry pool_geometry(const Tensor& in, const Tensor& out, Pool2dParams p) {
  return {in.size(0) * in.size(1), in.size(2), in.size(3), out.size(2), out.size(3), p};
}

// One thread per output element; the window is clipped to the input.
template <typename T>
__global__ void pool_forward_kernel(const T* x, T* y, int64_t* indices, PoolGeometry g, bool is_max) {
  const int64_t n = g.planes * g.out_h * g.out_w;
  for (int64_t o = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; o < n; o += int64_t(gridDim.x) * blockDim.x) {
    const int64_t ow = o % g.out_w, oh = (o / g.out_w) % g.out_h, plane = o / (g.out_w * g.out_h);
    const T* in = x + plane * g.height * g.width;
    const int64_t hs = oh * g.p.stride_h - g.p.pad_h, ws = ow * g.p.stride_w - g.p.pad_w;
    const int64_t h0 = max(hs, int64_t(0)), h1 = min(hs + g.p.kernel_h, g.height);
    const int64_t w0 = max(ws, int64_t(0)), w1 = min(ws + g.p.kernel_w, g.width);
    T best = -INFINITY;
    int64_t best_at = h0 * g.width + w0;
    double acc = 0.0;
    for (int64_t ih = h0; ih < h1; ++ih)
      for (int64_t iw = w0; iw < w1; ++iw) {
        const T v = in[ih * g.width + iw];
        acc += v;
        if (v > best || v != v) best = v, best_at = ih * g.width + iw;
      }
    if (is_max) {
      y[o] = best;
      indices[o] = best_at;
    } else {
      y[o] = T(acc / double(g.p.kernel_h * g.p.kernel_w));
    }
  }
}

// The first of the windows (along one axis, stride apart) that covers input position `padded`
// (its index plus the padding): window o covers it when o * stride <= padded < o * stride +
// kernel. The last one is padded / stride (col2im's bounds).
__device__ inline int64_t first_covering_window(int64_t padded, int64_t kernel, int64_t stride) {
  return padded < kernel ? 0 : (padded - kernel) / stride + 1;
}

// One thread per input element gathers from exactly the windows that cover it (no atomics
// needed, and no scan over a whole output row), in increasing output position.
template <typename T>
__global__ void avg_pool_backward_kernel(const T* gy, T* gx, PoolGeometry g) {
  const int64_t n = g.planes * g.height * g.width;
  const double scale = 1.0 / double(g.p.kernel_h * g.p.kernel_w);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t iw = i % g.width, ih = (i / g.width) % g.height, plane = i / (g.width * g.height);
    const int64_t padded_h = ih + g.p.pad_h, padded_w = iw + g.p.pad_w;
    const int64_t oh_end = min(padded_h / g.p.stride_h + 1, g.out_h), ow_end = min(padded_w / g.p.stride_w + 1, g.out_w);
    const int64_t ow_begin = first_covering_window(padded_w, g.p.kernel_w, g.p.stride_w);
    double acc = 0.0;
    for (int64_t oh = first_covering_window(padded_h, g.p.kernel_h, g.p.stride_h); oh < oh_end; ++oh)
      for (int64_t ow = ow_begin; ow < ow_end; ++ow) acc += gy[(plane * g.out_h + oh) * g.out_w + ow];
    gx[i] = T(acc * scale);
  }
}

// The element of grad_x that output o's gradient goes to: its window's argmax in its plane.
__global__ void max_pool_targets_kernel(const int64_t* indices, int64_t out_plane, int64_t in_plane, int64_t n,
                                        int64_t* targets) {
  for (int64_t o = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; o < n; o += int64_t(gridDim.x) * blockDim.x)
    targets[o] = (o / out_plane) * in_plane + indices[o];
}

}  // namespace

void CudaBackend::max_pool2d(const Tensor& x, const Tensor& y, const Tensor& indices, Pool2dParams p) {
  dispatch_floating(x.dtype(), "max_pool2d", [&](auto tag) {
    using T = decltype(tag);
    pool_forward_kernel<T><<<blocks_for(y.numel()), kThreads, 0, stream()>>>(ptr<const T>(x), ptr<T>(y),
                                                                            ptr<int64_t>(indices), pool_geometry(x, y, p), true);
    ML_CUDA_LAUNCHED("max_pool2d");
  });
}

void CudaBackend::max_pool2d_backward(const Tensor& grad_y, const Tensor& indices, const Tensor& grad_x) {
  fill(grad_x, 0.0);
  const Tensor targets = Tensor::empty({grad_y.numel()}, DType::Int64, grad_x.device());
  if (grad_y.numel() > 0) {
    max_pool_targets_kernel<<<blocks_for(grad_y.numel()), kThreads, 0, stream()>>>(
        ptr<const int64_t>(indices), grad_y.size(2) * grad_y.size(3), grad_x.size(2) * grad_x.size(3), grad_y.numel(),
        ptr<int64_t>(targets));
    ML_CUDA_LAUNCHED("max_pool2d_backward");
  }
  dispatch_floating(grad_x.dtype(), "max_pool2d_backward", [&](auto tag) {
    using T = decltype(tag);
    add_at<T>(ptr<T>(grad_x), grad_x.numel(), targets, ptr<const T>(grad_y), "max_pool2d_backward");
  });
}

void CudaBackend::avg_pool2d(const Tensor& x, const Tensor& y, Pool2dParams p) {
  dispatch_floating(x.dtype(), "avg_pool2d", [&](auto tag) {
    using T = decltype(tag);
    pool_forward_kernel<T><<<blocks_for(y.numel()), kThreads, 0, stream()>>>(ptr<const T>(x), ptr<T>(y), nullptr,
                                                                            pool_geometry(x, y, p), false);
    ML_CUDA_LAUNCHED("avg_pool2d");
  });
}

void CudaBackend::avg_pool2d_backward(const Tensor& grad_y, const Tensor& grad_x, Pool2dParams p) {
  dispatch_floating(grad_x.dtype(), "avg_pool2d_backward", [&](auto tag) {
    using T = decltype(tag);
    avg_pool_backward_kernel<T><<<blocks_for(grad_x.numel()), kThreads, 0, stream()>>>(
        ptr<const T>(grad_y), ptr<T>(grad_x), pool_geometry(grad_x, grad_y, p));
    ML_CUDA_LAUNCHED("avg_pool2d_backward");
  });
}

// ------------------------------------------------------------------------------- batch norm
namespace {

// One block per channel; channel c is N runs of H*W contiguous values.
template <typename T>
__global__ void channel_stats_kernel(const T* x, T* mean, T* var, int64_t N, int64_t C, int64_t HW) {
  __shared__ double s1[kThreads], s2[kThreads];
  const int64_t c = blockIdx.x, m = N * HW;
  double sum = 0.0;
  for (int64_t i = threadIdx.x; i < m; i += blockDim.x) sum += x[((i / HW) * C + c) * HW + i % HW];
  s1[threadIdx.x] = sum;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) s1[threadIdx.x] += s1[threadIdx.x + s];
    __syncthreads();
  }
  const double mu = s1[0] / double(m);
  double sq = 0.0;
  for (int64_t i = threadIdx.x; i < m; i += blockDim.x) {
    const double d = double(x[((i / HW) * C + c) * HW + i % HW]) - mu;
    sq += d * d;
  }
  s2[threadIdx.x] = sq;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) s2[threadIdx.x] += s2[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    mean[c] = T(mu);
    var[c] = T(s2[0] / double(m));
  }
}

// The activation a batch-norm kernel applies after normalizing, if any (FusedActivation::active).
struct FusedActivation {
  bool active;
  UnaryOp op;
};

// Channel c's normalized value of x: (x - mean) * invstd * weight + bias.
template <typename T>
__device__ T bn_normalized(T x, const T* mean, const T* invstd, const T* w, const T* b, int64_t c) {
  return (x - mean[c]) * invstd[c] * (w ? w[c] : T(1)) + (b ? b[c] : T(0));
}

// The gradient reaching the normalized value: g, or g * activation'(normalized).
template <typename T>
__device__ T bn_gradient_in(T g, T x, const T* mean, const T* invstd, const T* w, const T* b, int64_t c,
                            FusedActivation act) {
  if (!act.active) return g;
  return g * elementwise::activation_derivative(act.op, bn_normalized(x, mean, invstd, w, b, c));
}

template <typename T>
__global__ void bn_apply_kernel(const T* x, const T* mean, const T* invstd, const T* w, const T* b, FusedActivation act,
                                T* y, int64_t C, int64_t HW, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = (i / HW) % C;
    const T v = bn_normalized(x[i], mean, invstd, w, b, c);
    y[i] = act.active ? elementwise::unary_forward(act.op, v, T(0), T(0)) : v;
  }
}

// Per channel: sum(g) and sum(g * xhat) of the gradient g reaching the normalized value, one block
// per channel.
template <typename T>
__global__ void bn_grad_sums_kernel(const T* grad_y, const T* x, const T* mean, const T* invstd, const T* w, const T* b,
                                    FusedActivation act, double* sums, int64_t N, int64_t C, int64_t HW) {
  __shared__ double sg[kThreads], sgx[kThreads];
  const int64_t c = blockIdx.x, m = N * HW;
  double a = 0.0, d = 0.0;
  for (int64_t i = threadIdx.x; i < m; i += blockDim.x) {
    const int64_t at = ((i / HW) * C + c) * HW + i % HW;
    const T g = bn_gradient_in(grad_y[at], x[at], mean, invstd, w, b, c, act);
    a += g;
    d += double(g) * double((x[at] - mean[c]) * invstd[c]);
  }
  sg[threadIdx.x] = a;
  sgx[threadIdx.x] = d;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) {
      sg[threadIdx.x] += sg[threadIdx.x + s];
      sgx[threadIdx.x] += sgx[threadIdx.x + s];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    sums[2 * c] = sg[0];
    sums[2 * c + 1] = sgx[0];
  }
}

template <typename T>
__global__ void bn_backward_kernel(const T* grad_y, const T* x, const T* mean, const T* invstd, const T* w, const T* b,
                                   FusedActivation act, const double* sums, T* gx, T* gw, T* gb, int64_t C, int64_t HW,
                                   int64_t m, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = (i / HW) % C;
    const double xhat = double((x[i] - mean[c]) * invstd[c]);
    if (gx) {
      const T g = bn_gradient_in(grad_y[i], x[i], mean, invstd, w, b, c, act);
      gx[i] = T((w ? double(w[c]) : 1.0) * double(invstd[c]) *
                (double(g) - sums[2 * c] / double(m) - xhat * sums[2 * c + 1] / double(m)));
    }
    if (i < C) {  // the first C threads also write the per-channel parameter gradients
      if (gb) gb[i] = T(sums[2 * i]);
      if (gw) gw[i] = T(sums[2 * i + 1]);
    }
  }
}

}  // namespace

void CudaBackend::batch_norm_stats(const Tensor& x, const Tensor& mean, const Tensor& var) {
  dispatch_floating(x.dtype(), "batch_norm_stats", [&](auto tag) {
    using T = decltype(tag);
    launch_rows(x.size(1), "batch_norm_stats", [&](unsigned channels) {
      channel_stats_kernel<T><<<channels, kThreads, 0, stream()>>>(ptr<const T>(x), ptr<T>(mean), ptr<T>(var),
                                                                   x.size(0), x.size(1), x.size(2) * x.size(3));
    });
  });
}

void CudaBackend::batch_norm_apply(const Tensor& x, const Tensor& mean, const Tensor& invstd, const Tensor& weight,
                                   const Tensor& bias, std::optional<UnaryOp> activation, const Tensor& y) {
  const FusedActivation act{activation.has_value(), activation.value_or(UnaryOp::Relu)};
  dispatch_floating(x.dtype(), "batch_norm_apply", [&](auto tag) {
    using T = decltype(tag);
    bn_apply_kernel<T><<<blocks_for(x.numel()), kThreads, 0, stream()>>>(
        ptr<const T>(x), ptr<const T>(mean), ptr<const T>(invstd), weight.defined() ? ptr<const T>(weight) : nullptr,
        bias.defined() ? ptr<const T>(bias) : nullptr, act, ptr<T>(y), x.size(1), x.size(2) * x.size(3), x.numel());
    ML_CUDA_LAUNCHED("batch_norm_apply");
  });
}

void CudaBackend::batch_norm_backward(const Tensor& grad_y, const Tensor& x, const Tensor& mean, const Tensor& invstd,
                                      const Tensor& weight, const Tensor& bias, std::optional<UnaryOp> activation,
                                      const Tensor& grad_x, const Tensor& grad_weight, const Tensor& grad_bias) {
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  // An empty x has no channels here: the op rejects training on fewer than 2 values per channel.
  if (x.numel() == 0) return;
  const FusedActivation act{activation.has_value(), activation.value_or(UnaryOp::Relu)};
  const Tensor sums = Tensor::empty({C, 2}, DType::Float64, x.device());
  dispatch_floating(x.dtype(), "batch_norm_backward", [&](auto tag) {
    using T = decltype(tag);
    const T* w = weight.defined() ? ptr<const T>(weight) : nullptr;
    const T* b = bias.defined() ? ptr<const T>(bias) : nullptr;
    launch_rows(C, "batch_norm_backward", [&](unsigned channels) {
      bn_grad_sums_kernel<T><<<channels, kThreads, 0, stream()>>>(ptr<const T>(grad_y), ptr<const T>(x),
                                                                  ptr<const T>(mean), ptr<const T>(invstd), w, b, act,
                                                                  ptr<double>(sums), N, C, HW);
    });
    bn_backward_kernel<T><<<blocks_for(x.numel()), kThreads, 0, stream()>>>(
        ptr<const T>(grad_y), ptr<const T>(x), ptr<const T>(mean), ptr<const T>(invstd), w, b, act,
        ptr<const double>(sums), grad_x.defined() ? ptr<T>(grad_x) : nullptr,
        grad_weight.defined() ? ptr<T>(grad_weight) : nullptr, grad_bias.defined() ? ptr<T>(grad_bias) : nullptr, C, HW,
        N * HW, x.numel());
    ML_CUDA_LAUNCHED("batch_norm_backward");
  });
}

}  // namespace ml
