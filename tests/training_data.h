// Tiny generated training data for tests of whole runs: an IDX image set (the Fashion-MNIST
// layout) that a small CNN learns in a few steps, and a repetitive text for a character GPT.
#pragma once
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>

#include "framework/random.h"
#include "tests/temp_dir.h"

namespace ml {

inline void write_big_endian(std::ofstream& out, uint32_t value) {
  const char bytes[4] = {static_cast<char>(value >> 24), static_cast<char>(value >> 16), static_cast<char>(value >> 8),
                         static_cast<char>(value)};
  out.write(bytes, 4);
}

// An IDX image set (the Fashion-MNIST layout) of `size` x `size` grey images: class c in 0..3 is
// a bright square in quadrant c over seeded noise, so that a small model learns it in a few steps.
inline void write_idx_split(const std::string& dir, const std::string& prefix, int64_t count, int64_t size, uint64_t seed) {
  std::ofstream images(dir + "/" + prefix + "-images-idx3-ubyte", std::ios::binary);
  std::ofstream labels(dir + "/" + prefix + "-labels-idx1-ubyte", std::ios::binary);
  write_big_endian(images, 0x803);
  write_big_endian(images, static_cast<uint32_t>(count));
  write_big_endian(images, static_cast<uint32_t>(size));
  write_big_endian(images, static_cast<uint32_t>(size));
  write_big_endian(labels, 0x801);
  write_big_endian(labels, static_cast<uint32_t>(count));
  const int64_t half = size / 2;
  for (int64_t i = 0; i < count; ++i) {
    const int64_t label = i % 4;
    labels.put(static_cast<char>(label));
    for (int64_t y = 0; y < size; ++y)
      for (int64_t x = 0; x < size; ++x) {
        const bool inside = (y / half) == label / 2 && (x / half) == label % 2;
        const uint64_t noise = random_bits(seed, static_cast<uint64_t>((i * size + y) * size + x)) % 96;
        images.put(static_cast<char>((inside ? 128 : 0) + noise));
      }
  }
}

inline std::string write_idx_dataset(const TempDir& dir) {
  const std::string path = dir.file("idx");
  std::filesystem::create_directories(path);
  write_idx_split(path, "train", 256, 12, 1);
  write_idx_split(path, "t10k", 64, 12, 2);
  return path;
}

inline std::string write_text(const TempDir& dir) {
  const std::string path = dir.file("text.txt");
  std::ofstream out(path);
  for (int i = 0; i < 200; ++i) out << "the cat sat on the mat. a dog ran to the log. ";
  return path;
}

}  // namespace ml
