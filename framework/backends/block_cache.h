// A cache of freed memory blocks by rounded size, shared by the backends whose raw allocation is
// too slow to repeat every step (PyTorch's caching allocator in miniature):
// - CUDA: cudaMalloc/cudaFree synchronize the device and cost microseconds to milliseconds each.
// - CPU: glibc returns large freed blocks to the kernel (munmap, heap trimming), so every reuse
//   faults its pages in again. On the 2-vCPU VM this was a third of a Shakespeare training step
//   (60 steps: 23.5 s -> 14.8 s with the cache) and 40x on RMNP's row normalization of 768x3072.
// A training step allocates the same sizes every step, so after the first step nearly every
// request is served from the cache. Sizes round up to 512 bytes below 1 MiB and to 2 MiB above,
// so that similar requests share bins. Live and cached blocks together stay within twice the most
// bytes ever live at once (the peak), even when shapes keep changing. (A cache of at most the peak
// alone, the earlier rule, was too small at the end of a step: a step's blocks come in bins that
// do not serve each other, so more than the peak is live or cached during a step, and the CNN's
// step gave back a few of its 2-32 MiB blocks at every end and faulted them in again at the next:
// about 7 thousand page faults a step, which took it from 356 to 465 ms on a 2-vCPU EPYC VM.)
// To stay within it, the blocks freed longest ago go back first: releasing the block being freed
// instead left a repeated call of a new size faulting in its output on every call once blocks of
// other sizes filled the cache (layer norm of [16384, 1024] ran at half speed after `bench ops`'
// 256 MiB copy; 16 thousand page faults a call).
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <map>
#include <mutex>

namespace ml {

struct MemoryStats {
  size_t current_bytes = 0;  // held by live tensors
  size_t peak_bytes = 0;     // the maximum of current_bytes so far
  size_t cached_bytes = 0;   // freed blocks kept for reuse
};

// Raw provides: void* allocate(size_t) (nullptr when out of memory), void release(void*),
// void before_release_all() (e.g. wait for the device), [[noreturn]] void out_of_memory(size_t).
template <typename Raw>
class BlockCache {
 public:
  explicit BlockCache(Raw raw) : raw_(raw) {}
  ~BlockCache() {
    for (auto& [age, block] : by_age_) raw_.release(block.p);
  }
  BlockCache(const BlockCache&) = delete;
  BlockCache& operator=(const BlockCache&) = delete;

  static size_t round_size(size_t n) {
    const size_t granule = n < (size_t{1} << 20) ? 512 : (size_t{2} << 20);
    return (std::max<size_t>(n, 1) + granule - 1) / granule * granule;
  }

  void* allocate(size_t nbytes) {
    const size_t size = round_size(nbytes);
    std::lock_guard<std::mutex> lock(mutex_);
    void* p = nullptr;
    // The most recently freed block of this size (a multimap keeps equal keys in insertion order):
    // its lines are the likeliest to be still in the processor's cache.
    const auto same_size = ages_by_size_.equal_range(size);
    if (same_size.first != same_size.second) {
      const auto newest = std::prev(same_size.second);
      const auto block = by_age_.find(newest->second);
      p = block->second.p;
      by_age_.erase(block);
      ages_by_size_.erase(newest);
      stats_.cached_bytes -= size;
    } else if ((p = raw_.allocate(size)) == nullptr) {
      release_all_cached();  // out of memory: give the cache back and retry once
      if ((p = raw_.allocate(size)) == nullptr) raw_.out_of_memory(size);
    }
    stats_.current_bytes += size;
    stats_.peak_bytes = std::max(stats_.peak_bytes, stats_.current_bytes);
    return p;
  }

  void deallocate(void* p, size_t nbytes) {
    const size_t size = round_size(nbytes);
    std::lock_guard<std::mutex> lock(mutex_);
    stats_.current_bytes -= size;
    while (!by_age_.empty() && stats_.current_bytes + stats_.cached_bytes + size > 2 * stats_.peak_bytes)
      release_oldest();
    const uint64_t age = next_age_++;
    by_age_.emplace(age, FreeBlock{size, p});
    ages_by_size_.emplace(size, age);
    stats_.cached_bytes += size;
  }

  MemoryStats stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    return stats_;
  }

  // Gives every cached block back (live blocks stay): the next requests allocate afresh.
  void release_cached() {
    std::lock_guard<std::mutex> lock(mutex_);
    release_all_cached();
  }

 private:
  struct FreeBlock {
    size_t size;
    void* p;
  };

  void release_oldest() {
    const auto oldest = by_age_.begin();
    const auto same_size = ages_by_size_.equal_range(oldest->second.size);
    for (auto it = same_size.first; it != same_size.second; ++it)
      if (it->second == oldest->first) {
        ages_by_size_.erase(it);
        break;
      }
    raw_.release(oldest->second.p);
    stats_.cached_bytes -= oldest->second.size;
    by_age_.erase(oldest);
  }

  void release_all_cached() {
    raw_.before_release_all();
    for (auto& [age, block] : by_age_) raw_.release(block.p);
    by_age_.clear();
    ages_by_size_.clear();
    stats_.cached_bytes = 0;
  }

  Raw raw_;
  std::mutex mutex_;
  // The free blocks by the order they were freed in (the key counts frees), and their keys by size.
  std::map<uint64_t, FreeBlock> by_age_;
  std::multimap<size_t, uint64_t> ages_by_size_;
  uint64_t next_age_ = 0;
  MemoryStats stats_;
};

}  // namespace ml
