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

// `limit` (CIFAR-10 and IDX, whose files are already in random class order): keep only the first N
// examples of each split; 0 keeps all.

// The records of one CIFAR-10 batch file (data_batch_1.bin .. 5, test_batch.bin).
constexpr int64_t kCifarBatchRecords = 10000;

// CIFAR-10 binary records (1 label byte + 3072 pixel bytes, channel-major RGB 32x32) from `files`,
// concatenated in order. `records_per_file` > 0: every file must hold exactly that many records.
ImageDataset read_cifar10_files(const std::vector<std::string>& files, int64_t limit = 0, int64_t records_per_file = 0);
// The cifar-10-batches-bin folder: data_batch_1..5.bin -> train, test_batch.bin -> val;
// class names from batches.meta.txt when present. A batch file of another size than
// `records_per_file` (kCifarBatchRecords; smaller in tests) is truncated or not CIFAR-10: refused.
ImageSplits load_cifar10(const std::string& dir, int64_t limit = 0, int64_t records_per_file = kCifarBatchRecords);

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
  // > 0: a seeded sample of this many images of the split, drawn across all classes (the first N
  // files in class order would be one class only), kept in class order.
  int64_t limit_train = 0;
  int64_t limit_val = 0;
};
// Classes are the sorted subfolder names of train_dir; files are taken in sorted name order. Every
// entry must be a class folder holding .png/.jpg/.jpeg files and nothing else: anything the reader
// would skip (another file, a subfolder, an empty class) is refused, naming it, rather than
// dropped without a word. PNG files are checked chunk by chunk (lengths and CRCs) before decoding;
// JPEG files with damaged data are refused too (decode_image).
ImageSplits load_image_folder(const ImageFolderOptions& options);

// Throws std::runtime_error naming `path` and what is wrong when `bytes` are not a well-formed PNG
// stream: the signature, every chunk's length and crc32, IHDR first and IEND last.
void check_png_structure(const std::string& bytes, const std::string& path);
// Decodes one PNG or JPEG file's `bytes` (read from `path`, which errors name) with `channels`
// channels, center-cropped and resized to size x size (square_resize_to_chw). PNGs are checked
// with check_png_structure first, since the decoder (stb_image) ignores CRCs; JPEGs are decoded by
// libjpeg-turbo, and refused where it finds damaged data (where it would warn and go on).
std::vector<uint8_t> decode_image(const std::string& bytes, const std::string& path, int64_t channels, int64_t size);

// Crops the largest centered square of an interleaved HWC image and resizes it bilinearly
// (half-pixel centers, like align_corners=false) to size x size; returns CHW.
std::vector<uint8_t> square_resize_to_chw(const uint8_t* hwc, int64_t height, int64_t width, int64_t channels,
                                          int64_t size);

}  // namespace ml
