// In-memory labelled image sets and their readers: CIFAR-10 binary, IDX (MNIST / Fashion-MNIST,
// optionally gzip-compressed) and class-per-subfolder image folders.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace ml {

struct ImageDataset {
  int64_t channels = 0;
  int64_t height = 0;
  int64_t width = 0;
  int64_t num_classes = 0;
  std::vector<uint8_t> pixels;  // [N, C, H, W]
  std::vector<int64_t> labels;  // [N], each in [0, num_classes)
  std::vector<std::string> class_names;  // empty when the format has none

  int64_t size() const { return static_cast<int64_t>(labels.size()); }
  int64_t image_numel() const { return channels * height * width; }
  const uint8_t* image(int64_t i) const { return pixels.data() + i * image_numel(); }
};

struct ImageSplits {
  ImageDataset train;
  ImageDataset val;
};

// `limit` (every reader): keep only the first N examples of each split; 0 keeps all.

// CIFAR-10 binary records (1 label byte + 3072 pixel bytes, channel-major RGB 32x32) from `files`,
// concatenated in order.
ImageDataset read_cifar10_files(const std::vector<std::string>& files, int64_t limit = 0);
// The cifar-10-batches-bin folder: data_batch_1..5.bin -> train, test_batch.bin -> val;
// class names from batches.meta.txt when present.
ImageSplits load_cifar10(const std::string& dir, int64_t limit = 0);

// One IDX pair: unsigned-byte images [N, H, W] (magic 0x803) and labels [N] (magic 0x801).
// Plain or gzip-compressed files are both accepted.
ImageDataset read_idx(const std::string& images_path, const std::string& labels_path, int64_t num_classes = 10,
                      int64_t limit = 0);
// A folder with {train,t10k}-{images-idx3,labels-idx1}-ubyte, each plain or with .gz.
ImageSplits load_idx_dir(const std::string& dir, int64_t num_classes = 10, int64_t limit = 0);

struct ImageFolderOptions {
  std::string train_dir;   // one subfolder per class holding .png/.jpg/.jpeg files
  std::string val_dir;     // same layout; when empty, a seeded val_fraction of train_dir is held out
  double val_fraction = 0.1;
  uint64_t seed = 0;
  int64_t image_size = 32;  // images are center-cropped to a square, then resized to this side
  int64_t channels = 3;     // 1 (grey) or 3 (RGB)
  int64_t limit = 0;
};
// Classes are the sorted subfolder names of train_dir; files are taken in sorted name order.
ImageSplits load_image_folder(const ImageFolderOptions& options);

// Crops the largest centered square of an interleaved HWC image and resizes it bilinearly
// (half-pixel centers, like align_corners=false) to size x size; returns CHW.
std::vector<uint8_t> square_resize_to_chw(const uint8_t* hwc, int64_t height, int64_t width, int64_t channels,
                                          int64_t size);

}  // namespace ml
