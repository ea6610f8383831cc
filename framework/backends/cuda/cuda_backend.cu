// Device memory (a caching allocator), host<->device copies, the stream and library handles.
#include <map>
#include <mutex>

#include "framework/backends/cuda/cuda_backend.h"
#include "framework/backends/cuda/cuda_backend_impl.cuh"
#include "framework/backends/cuda/cuda_common.cuh"
#include "framework/backends/cuda/cuda_runtime_probe.h"

namespace ml {
using namespace cuda_detail;

namespace {

// Like PyTorch's caching allocator in miniature: freed blocks are kept in per-size bins and
// handed out again, because cudaMalloc/cudaFree synchronize the device and cost microseconds to
// milliseconds each — far more than a training step's small tensors can afford. Sizes round up
// to 512 bytes below 1 MiB and to 2 MiB above, so that similar requests share bins.
class CachingAllocator {
 public:
  static size_t round_size(size_t n) {
    const size_t granule = n < (1u << 20) ? 512 : (2u << 20);
    return (std::max<size_t>(n, 1) + granule - 1) / granule * granule;
  }

  void* allocate(size_t nbytes) {
    const size_t size = round_size(nbytes);
    std::lock_guard<std::mutex> lock(mutex_);
    void* p = nullptr;
    auto it = free_.find(size);
    if (it != free_.end()) {
      p = it->second;
      free_.erase(it);
      stats_.cached_bytes -= size;
    } else if (cudaMalloc(&p, size) != cudaSuccess) {
      cudaGetLastError();
      release_cached();  // out of memory: give the cache back to the driver and retry once
      ML_CUDA_CHECK(cudaMalloc(&p, size), "allocate");
    }
    stats_.current_bytes += size;
    stats_.peak_bytes = std::max(stats_.peak_bytes, stats_.current_bytes);
    return p;
  }

  void deallocate(void* p, size_t nbytes) {
    const size_t size = round_size(nbytes);
    std::lock_guard<std::mutex> lock(mutex_);
    free_.emplace(size, p);
    stats_.current_bytes -= size;
    stats_.cached_bytes += size;
  }

  CudaMemoryStats stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    return stats_;
  }

 private:
  void release_cached() {
    cudaDeviceSynchronize();
    for (auto& [size, p] : free_) cudaFree(p);
    free_.clear();
    stats_.cached_bytes = 0;
  }

  std::mutex mutex_;
  std::multimap<size_t, void*> free_;
  CudaMemoryStats stats_;
};

// Never destroyed: tensors held in statics may free their storage after main() returns.
CachingAllocator& allocator() {
  static CachingAllocator* a = new CachingAllocator;
  return *a;
}

MatmulPrecision g_matmul_precision = MatmulPrecision::Float32;

}  // namespace

namespace cuda_detail {
// One stream for everything: kernels run in issue order, so no event bookkeeping is needed
// between ops, and freed blocks can be reused by later work on the same stream at once.
cudaStream_t stream() {
  static cudaStream_t s = [] {
    cudaStream_t created;
    ML_CUDA_CHECK(cudaStreamCreateWithFlags(&created, cudaStreamNonBlocking), "stream");
    return created;
  }();
  return s;
}
cublasHandle_t cublas() {
  static cublasHandle_t h = [] {
    cublasHandle_t created;
    ML_CUDA_CHECK(cublasCreate(&created), "cublas");
    ML_CUDA_CHECK(cublasSetStream(created, stream()), "cublas");
    return created;
  }();
  return h;
}

Tensor workspace(size_t bytes, Device device) {
  return Tensor::empty({static_cast<int64_t>((bytes + 7) / 8)}, DType::Float64, device);
}

namespace {
__global__ void out_of_range_kernel(const int64_t* values, int64_t n, int64_t bound, int64_t ignore, int64_t* status) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    if (values[i] != ignore && (values[i] < 0 || values[i] >= bound)) {
      atomicAdd(reinterpret_cast<unsigned long long*>(status), 1ull);
      status[1] = values[i];
    }
}
}  // namespace

bool find_out_of_range(const Tensor& values, int64_t bound, int64_t ignore, int64_t* offending) {
  const Tensor status = Tensor::empty({2}, DType::Int64, values.device());
  ML_CUDA_CHECK(cudaMemsetAsync(status.raw_data(), 0, 2 * sizeof(int64_t), stream()), "find_out_of_range");
  out_of_range_kernel<<<blocks_for(values.numel()), kThreads, 0, stream()>>>(ptr<const int64_t>(values), values.numel(),
                                                                             bound, ignore, ptr<int64_t>(status));
  ML_CUDA_LAUNCHED("find_out_of_range");
  const std::vector<int64_t> host = status.to_vector<int64_t>();
  *offending = host[1];
  return host[0] != 0;
}
}  // namespace cuda_detail

void* CudaBackend::allocate(size_t nbytes) { return allocator().allocate(nbytes); }
void CudaBackend::deallocate(void* p, size_t nbytes) { allocator().deallocate(p, nbytes); }

void CudaBackend::copy_from_host(void* dst, const void* src, size_t nbytes) {
  if (!nbytes) return;
  ML_CUDA_CHECK(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyHostToDevice, stream()), "copy_from_host");
  // The host buffer may be freed as soon as we return (pageable memory is staged anyway).
  ML_CUDA_CHECK(cudaStreamSynchronize(stream()), "copy_from_host");
}

void CudaBackend::copy_to_host(void* dst, const void* src, size_t nbytes) {
  if (!nbytes) return;
  ML_CUDA_CHECK(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDeviceToHost, stream()), "copy_to_host");
  ML_CUDA_CHECK(cudaStreamSynchronize(stream()), "copy_to_host");
}

void CudaBackend::synchronize() { ML_CUDA_CHECK(cudaStreamSynchronize(stream()), "synchronize"); }

Backend& cuda_backend() {
  if (cuda_device_count() == 0) throw std::runtime_error("cuda: no CUDA device is present");
  static CudaBackend backend;
  return backend;
}

CudaMemoryStats cuda_memory_stats() { return allocator().stats(); }
// Each gemm picks its compute type from the precision; the cuBLAS handle keeps its default math
// mode, under which CUBLAS_COMPUTE_32F is exact float32.
void cuda_set_matmul_precision(MatmulPrecision precision) { g_matmul_precision = precision; }
MatmulPrecision cuda_matmul_precision() { return g_matmul_precision; }

}  // namespace ml
