// Counter-based random numbers: a draw is a pure function of (seed, counter), so element i of a
// random tensor does not depend on thread count or device, and the generator's whole state is two
// integers (saved in checkpoints). The mixing function is splitmix64's finalizer applied twice.
#pragma once
#include <cmath>
#include <cstdint>

#ifdef __CUDACC__
#define ML_HOST_DEVICE __host__ __device__
#else
#define ML_HOST_DEVICE
#endif

namespace ml {

ML_HOST_DEVICE inline uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

ML_HOST_DEVICE inline uint64_t random_bits(uint64_t seed, uint64_t counter) {
  return mix64(mix64(seed * 0x9e3779b97f4a7c15ULL + 0x632be59bd9b4e019ULL) ^ (counter + 0x9e3779b97f4a7c15ULL));
}

// Uniform in the open interval (0, 1), from the top 53 bits.
ML_HOST_DEVICE inline double random_uniform(uint64_t seed, uint64_t counter) {
  return (static_cast<double>(random_bits(seed, counter) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

// Standard normal by Box-Muller from the uniforms at counters c and c+1 (a draw of n normals
// therefore reserves 2n counters).
ML_HOST_DEVICE inline double random_normal(uint64_t seed, uint64_t c) {
  const double u1 = random_uniform(seed, c), u2 = random_uniform(seed, c + 1);
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
}

class Generator {
 public:
  explicit Generator(uint64_t seed = 0) : seed_(seed) {}
  uint64_t seed() const { return seed_; }
  uint64_t offset() const { return offset_; }
  void set_state(uint64_t seed, uint64_t offset) { seed_ = seed, offset_ = offset; }
  // Reserves n counters and returns the first.
  uint64_t take(uint64_t n) {
    const uint64_t start = offset_;
    offset_ += n;
    return start;
  }

 private:
  uint64_t seed_ = 0;
  uint64_t offset_ = 0;
};

// The process-wide generator used when an op is not given one (torch's default generator).
Generator& default_generator();
inline void manual_seed(uint64_t seed) { default_generator().set_state(seed, 0); }

}  // namespace ml
