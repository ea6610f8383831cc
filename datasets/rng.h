// Counter-based random numbers for the data pipeline.
// Every random choice (epoch order, augmentation, text windows) is derived by hashing its
// coordinates (seed, stream, epoch, index, ...), so any batch can be rebuilt on its own: resuming a
// run only needs the batch position. splitmix64 and integer arithmetic keep the values identical
// across compilers and standard libraries, which std::*_distribution does not promise.
#pragma once
#include <cstdint>
#include <initializer_list>
#include <vector>

#include "framework/random.h"  // mix64: splitmix64's output function

namespace ml {

// Separates the uses of one seed so that, e.g., shuffling and augmentation never share values.
enum class RngStream : uint64_t { Shuffle = 1, Augment, TextWindows, Synthetic, FolderSplit, AlternatingFlip, FolderLimit };

// A key identifying one random stream: the seed, the stream kind and any number of coordinates.
inline uint64_t rng_key(uint64_t seed, RngStream stream, std::initializer_list<uint64_t> coordinates) {
  constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull;
  uint64_t key = mix64(seed + kGolden);
  key = mix64(key ^ (static_cast<uint64_t>(stream) + kGolden));
  for (uint64_t c : coordinates) key = mix64(key ^ (c + kGolden));
  return key;
}

// A splitmix64 sequence starting from a key.
class CounterRng {
 public:
  explicit CounterRng(uint64_t key) : state_(key) {}

  uint64_t next() {
    state_ += 0x9E3779B97F4A7C15ull;
    return mix64(state_);
  }
  // Uniform in [0, n) by multiply-high; the bias (at most n / 2^64) is far below anything measurable.
  uint64_t below(uint64_t n) { return static_cast<uint64_t>((static_cast<unsigned __int128>(next()) * n) >> 64); }
  // Uniform in [-radius, radius].
  int64_t symmetric(int64_t radius) { return static_cast<int64_t>(below(2 * radius + 1)) - radius; }
  // Uniform in [0, 1) with 53 random bits.
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }
  // Standard normal by Box-Muller (only libm's log/sqrt/cos, no std distribution).
  double normal();

 private:
  uint64_t state_;
};

// A permutation of 0..n-1 (Fisher-Yates) determined by `key`.
std::vector<int64_t> seeded_permutation(int64_t n, uint64_t key);

}  // namespace ml
