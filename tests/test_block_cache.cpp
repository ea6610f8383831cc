// The backends' block cache (framework/backends/block_cache.h) over a counting fake allocator.
#include <gtest/gtest.h>

#include <cstdlib>
#include <new>
#include <set>

#include "framework/backends/block_cache.h"

namespace {

using ml::BlockCache;

// Hands out heap blocks, counts calls, and can refuse requests while `fail` is set.
struct CountingMemory {
  struct Counts {
    int allocations = 0, releases = 0, release_alls = 0;
    bool fail_next = false;
    std::set<void*> live;
  };
  Counts* counts;
  void* allocate(size_t nbytes) {
    if (counts->fail_next) {
      counts->fail_next = false;
      return nullptr;
    }
    ++counts->allocations;
    void* p = std::malloc(nbytes);
    counts->live.insert(p);
    return p;
  }
  void release(void* p) {
    ++counts->releases;
    counts->live.erase(p);
    std::free(p);
  }
  void before_release_all() { ++counts->release_alls; }
  [[noreturn]] void out_of_memory(size_t) { throw std::bad_alloc(); }
};

TEST(BlockCache, RoundsSizesIntoSharedBins) {
  using Cache = BlockCache<CountingMemory>;
  EXPECT_EQ(Cache::round_size(0), 512u);
  EXPECT_EQ(Cache::round_size(513), 1024u);
  EXPECT_EQ(Cache::round_size((1u << 20) - 1), 1u << 20);
  EXPECT_EQ(Cache::round_size((1u << 20) + 1), 2u << 20);
  EXPECT_EQ(Cache::round_size(9u << 20), 10u << 20);
}

TEST(BlockCache, AFreedBlockServesTheNextRequestOfItsBin) {
  CountingMemory::Counts counts;
  BlockCache<CountingMemory> cache(CountingMemory{&counts});
  void* a = cache.allocate(3000);
  cache.deallocate(a, 3000);
  EXPECT_EQ(cache.stats().cached_bytes, 3072u);
  void* b = cache.allocate(2900);  // the same 3072-byte bin
  EXPECT_EQ(b, a);
  EXPECT_EQ(counts.allocations, 1);
  void* c = cache.allocate(5000);  // another bin: a new block
  EXPECT_NE(c, a);
  EXPECT_EQ(counts.allocations, 2);
  EXPECT_EQ(cache.stats().current_bytes, 3072u + 5120u);
  EXPECT_EQ(cache.stats().peak_bytes, 3072u + 5120u);
  cache.deallocate(b, 2900);
  cache.deallocate(c, 5000);
  EXPECT_EQ(cache.stats().current_bytes, 0u);
}

TEST(BlockCache, ServesTheMostRecentlyFreedBlockOfABinFirst) {
  CountingMemory::Counts counts;
  BlockCache<CountingMemory> cache(CountingMemory{&counts});
  void* older = cache.allocate(3000);
  void* newer = cache.allocate(3000);
  void* newest = cache.allocate(3000);
  cache.deallocate(older, 3000);
  cache.deallocate(newer, 3000);
  cache.deallocate(newest, 3000);
  EXPECT_EQ(cache.allocate(3000), newest);  // still in the processor's cache, the others may not be
  EXPECT_EQ(cache.allocate(3000), newer);
  EXPECT_EQ(cache.allocate(3000), older);
  EXPECT_EQ(counts.allocations, 3);
  for (void* p : {older, newer, newest}) cache.deallocate(p, 3000);
}

TEST(BlockCache, KeepsLiveAndCachedBytesWithinTwiceThePeakReleasingTheOldestFreedFirst) {
  CountingMemory::Counts counts;
  BlockCache<CountingMemory> cache(CountingMemory{&counts});
  void* first = cache.allocate(1024);
  void* second = cache.allocate(1024);
  void* third = cache.allocate(2048);
  cache.deallocate(first, 1024);
  cache.deallocate(second, 1024);
  cache.deallocate(third, 2048);  // peak 4096, all cached
  void* larger = cache.allocate(3584);  // a new bin, under the peak
  cache.deallocate(larger, 3584);       // kept: cached 7680 of at most 8192
  EXPECT_EQ(counts.releases, 0);
  void* other = cache.allocate(2560);  // another new bin: live 2560 + cached 7680
  cache.deallocate(other, 2560);       // kept; the two blocks freed first make room for it
  EXPECT_EQ(counts.releases, 2);
  EXPECT_EQ(counts.live.count(first), 0u);
  EXPECT_EQ(counts.live.count(second), 0u);
  EXPECT_EQ(cache.stats().cached_bytes, 2048u + 3584u + 2560u);
  EXPECT_EQ(cache.allocate(2048), third);
  EXPECT_EQ(cache.allocate(3584), larger);
  EXPECT_EQ(cache.allocate(2560), other);
  EXPECT_EQ(counts.allocations, 5);
  cache.deallocate(third, 2048);
  cache.deallocate(larger, 3584);
  cache.deallocate(other, 2560);
}

TEST(BlockCache, OutOfMemoryReleasesTheCacheAndRetriesOnce) {
  CountingMemory::Counts counts;
  BlockCache<CountingMemory> cache(CountingMemory{&counts});
  void* a = cache.allocate(1024);
  cache.deallocate(a, 1024);
  counts.fail_next = true;
  void* b = cache.allocate(512);  // refused once: the cached 1024-byte block goes back, then a retry
  EXPECT_NE(b, nullptr);
  EXPECT_EQ(counts.release_alls, 1);
  EXPECT_EQ(counts.releases, 1);
  EXPECT_EQ(cache.stats().cached_bytes, 0u);
  cache.deallocate(b, 512);
}

}  // namespace
