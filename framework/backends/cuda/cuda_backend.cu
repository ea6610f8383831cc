// Device memory (a caching allocator), host<->device copies, the stream and library handles.
#include <algorithm>
#include <atomic>
#include <cstring>
#include <mutex>
#include <new>
#include <string>

#include "framework/backends/block_cache.h"
#include "framework/backends/cuda/cuda_backend.h"
#include "framework/backends/cuda/cuda_backend_impl.cuh"
#include "framework/backends/cuda/cuda_common.cuh"
#include "framework/backends/cuda/cuda_runtime_probe.h"

namespace ml {
using namespace cuda_detail;

namespace {

// Device memory for the block cache (framework/backends/block_cache.h), which keeps freed blocks
// for reuse because cudaMalloc/cudaFree synchronize the device.
struct CudaDeviceMemory {
  void* allocate(size_t nbytes) {
    void* p = nullptr;
    if (cudaMalloc(&p, nbytes) == cudaSuccess) return p;
    cudaGetLastError();  // clear the error: the cache releases its blocks and retries
    return nullptr;
  }
  void release(void* p) { cudaFree(p); }
  void before_release_all() { cudaDeviceSynchronize(); }
  [[noreturn]] void out_of_memory(size_t nbytes) {
    void* p = nullptr;
    ML_CUDA_CHECK(cudaMalloc(&p, nbytes), "allocate");  // throws with CUDA's own message
    cudaFree(p);
    throw std::bad_alloc();
  }
};
using CachingAllocator = BlockCache<CudaDeviceMemory>;

// Never destroyed: tensors held in statics may free their storage after main() returns.
CachingAllocator& allocator() {
  static CachingAllocator* a = new CachingAllocator(CudaDeviceMemory{});
  return *a;
}

MatmulPrecision g_matmul_precision = MatmulPrecision::Float32;
bool g_deterministic = true;

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

const BadIndexSlot& bad_index_slot() {
  // Never freed, like the allocator: kernels may use it until the process ends.
  static const BadIndexSlot slot = [] {
    BadIndexSlot created{};
    ML_CUDA_CHECK(cudaMalloc(&created.claimed, sizeof(int)), "bad_index_slot");
    ML_CUDA_CHECK(cudaMemsetAsync(created.claimed, 0, sizeof(int), stream()), "bad_index_slot");
    void* host = nullptr;
    ML_CUDA_CHECK(cudaHostAlloc(&host, sizeof(BadIndex), cudaHostAllocMapped), "bad_index_slot");
    created.record = static_cast<BadIndex*>(host);
    *created.record = BadIndex{IndexUse::None, 0, 0};
    return created;
  }();
  return slot;
}
}  // namespace cuda_detail

namespace {

std::string describe(const BadIndex& bad) {
  const std::string value = std::to_string(bad.value), bound = std::to_string(bad.bound);
  switch (bad.use) {
    case IndexUse::IndexSelect: return "index_select: index " + value + " out of range [0, " + bound + ")";
    case IndexUse::IndexAdd: return "index_add: index " + value + " out of range [0, " + bound + ")";
    case IndexUse::Gather: return "gather: index " + value + " out of range [0, " + bound + ")";
    case IndexUse::ScatterAdd: return "scatter_add: index " + value + " out of range [0, " + bound + ")";
    case IndexUse::CrossEntropyTarget:
      return "cross_entropy: target " + value + " is out of range for " + bound + " classes";
    case IndexUse::None: break;
  }
  return "bad index " + value;
}

// Waits for the stream, then throws the bad index a kernel recorded since the last report (and
// clears the record, so that later work starts clean).
void synchronize_stream(const char* where) {
  ML_CUDA_CHECK(cudaStreamSynchronize(stream()), where);
  const BadIndexSlot& slot = bad_index_slot();
  if (slot.record->use == IndexUse::None) return;
  const BadIndex bad = *slot.record;
  slot.record->use = IndexUse::None;
  ML_CUDA_CHECK(cudaMemsetAsync(slot.claimed, 0, sizeof(int), stream()), where);
  throw std::out_of_range(describe(bad) + " (found on the device by an earlier kernel, reported at the next synchronization, in " +
                          where + ")");
}

std::atomic<int64_t> g_device_to_host_copies{0};

// Host-to-device copies in stream order, without waiting for the stream. The caller may free or
// overwrite its (pageable) buffer as soon as copy_from_host returns, but CUDA documents a pageable
// source as read by then only for the synchronous cudaMemcpy (which would order the copy on the
// legacy stream, not ours): of cudaMemcpyAsync it says only that it "might be synchronous" and
// "may" stage through pinned memory (older releases: on a worker thread). So the bytes are first
// copied into a page-locked staging buffer here, on the host, and cudaMemcpyAsync from that
// pinned memory, which is fully asynchronous, takes them to the device when the stream gets
// there. An event recorded after each copy tells when its buffer may be refilled: the buffers
// are used round robin, so refilling one waits only for the copy issued kSlots copies earlier,
// and a copy larger than a buffer goes in pieces. At most kSlots x kSlotBytes stay pinned.
class StagedHostToDevice {
 public:
  void copy(char* dst, const char* src, size_t nbytes) {
    const std::lock_guard<std::mutex> lock(mutex_);  // the slots are shared by every caller
    for (size_t done = 0; done < nbytes; done += kSlotBytes) {
      const size_t piece = std::min(kSlotBytes, nbytes - done);
      Slot& slot = slots_[next_];
      next_ = (next_ + 1) % kSlots;
      if (!slot.buffer) {
        ML_CUDA_CHECK(cudaHostAlloc(&slot.buffer, kSlotBytes, cudaHostAllocDefault), "copy_from_host");
        ML_CUDA_CHECK(cudaEventCreateWithFlags(&slot.copied, cudaEventDisableTiming), "copy_from_host");
      } else {
        ML_CUDA_CHECK(cudaEventSynchronize(slot.copied), "copy_from_host");  // its last copy has read it
      }
      std::memcpy(slot.buffer, src + done, piece);
      ML_CUDA_CHECK(cudaMemcpyAsync(dst + done, slot.buffer, piece, cudaMemcpyHostToDevice, stream()),
                    "copy_from_host");
      ML_CUDA_CHECK(cudaEventRecord(slot.copied, stream()), "copy_from_host");
    }
  }

 private:
  static constexpr size_t kSlotBytes = size_t{4} << 20;
  static constexpr int kSlots = 16;
  struct Slot {
    void* buffer = nullptr;  // pinned, allocated at first use
    cudaEvent_t copied = nullptr;
  };
  std::mutex mutex_;
  Slot slots_[kSlots];
  int next_ = 0;
};

// Never destroyed, like the allocator: copies may still read its buffers when main() returns.
StagedHostToDevice& staged_host_to_device() {
  static StagedHostToDevice* staging = new StagedHostToDevice();
  return *staging;
}

}  // namespace

void* CudaBackend::allocate(size_t nbytes) { return allocator().allocate(nbytes); }
void CudaBackend::deallocate(void* p, size_t nbytes) { allocator().deallocate(p, nbytes); }

void CudaBackend::copy_from_host(void* dst, const void* src, size_t nbytes) {
  staged_host_to_device().copy(static_cast<char*>(dst), static_cast<const char*>(src), nbytes);
}

void CudaBackend::copy_to_host(void* dst, const void* src, size_t nbytes) {
  if (!nbytes) return;
  ++g_device_to_host_copies;
  ML_CUDA_CHECK(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDeviceToHost, stream()), "copy_to_host");
  synchronize_stream("copy_to_host");
}

void CudaBackend::synchronize() { synchronize_stream("synchronize"); }

Backend& cuda_backend() {
  if (cuda_device_count() == 0) throw std::runtime_error("cuda: no CUDA device is present");
  static CudaBackend backend;
  return backend;
}

MemoryStats cuda_memory_stats() { return allocator().stats(); }
// Each gemm picks its compute type from the precision; the cuBLAS handle keeps its default math
// mode, under which CUBLAS_COMPUTE_32F is exact float32.
void cuda_set_matmul_precision(MatmulPrecision precision) { g_matmul_precision = precision; }
MatmulPrecision cuda_matmul_precision() { return g_matmul_precision; }
void cuda_set_deterministic(bool deterministic) { g_deterministic = deterministic; }
bool cuda_deterministic() { return g_deterministic; }
int64_t cuda_device_to_host_copies() { return g_device_to_host_copies.load(); }

}  // namespace ml
