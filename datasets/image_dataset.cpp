#include "datasets/image_dataset.h"

#include <zlib.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>

#define STB_IMAGE_IMPLEMENTATION
#include <stb_image.h>

#include "datasets/rng.h"

namespace ml {
namespace fs = std::filesystem;

namespace {

constexpr int64_t kCifarSide = 32;
constexpr int64_t kCifarPixels = 3 * kCifarSide * kCifarSide;
constexpr int64_t kCifarRecord = 1 + kCifarPixels;
constexpr int64_t kCifarClasses = 10;

void keep_first(ImageDataset& data, int64_t limit) {
  if (limit <= 0 || data.size() <= limit) return;
  data.labels.resize(static_cast<size_t>(limit));
  data.pixels.resize(static_cast<size_t>(limit * data.image_numel()));
}

std::vector<std::string> read_class_names(const std::string& path) {
  std::ifstream in(path);
  std::vector<std::string> names;
  for (std::string line; std::getline(in, line);) {
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
    if (!line.empty()) names.push_back(line);
  }
  return names;
}

}  // namespace

ImageDataset read_cifar10_files(const std::vector<std::string>& files, int64_t limit) {
  ImageDataset data;
  data.channels = 3;
  data.height = kCifarSide;
  data.width = kCifarSide;
  data.num_classes = kCifarClasses;
  std::vector<uint8_t> records;
  for (const std::string& file : files) {
    if (limit > 0 && data.size() >= limit) break;
    std::error_code error;
    const auto bytes = static_cast<int64_t>(fs::file_size(file, error));
    if (error) throw std::runtime_error("cannot open CIFAR-10 file " + file + ": " + error.message());
    if (bytes == 0 || bytes % kCifarRecord != 0) {
      throw std::runtime_error("CIFAR-10 file " + file + " has " + std::to_string(bytes) +
                               " bytes, not a positive multiple of the 3073-byte record (truncated or not CIFAR-10 binary)");
    }
    int64_t count = bytes / kCifarRecord;
    if (limit > 0) count = std::min(count, limit - data.size());
    records.resize(static_cast<size_t>(count * kCifarRecord));
    std::ifstream in(file, std::ios::binary);
    if (!in.read(reinterpret_cast<char*>(records.data()), static_cast<std::streamsize>(records.size()))) {
      throw std::runtime_error("cannot read CIFAR-10 file " + file);
    }
    const int64_t first = data.size();
    data.labels.resize(static_cast<size_t>(first + count));
    data.pixels.resize(static_cast<size_t>((first + count) * kCifarPixels));
    for (int64_t r = 0; r < count; ++r) {
      const uint8_t* record = records.data() + r * kCifarRecord;
      if (record[0] >= kCifarClasses) {
        throw std::runtime_error("CIFAR-10 file " + file + ": record " + std::to_string(r) + " has label " +
                                 std::to_string(record[0]) + ", expected 0..9");
      }
      data.labels[first + r] = record[0];
      std::copy(record + 1, record + kCifarRecord, data.pixels.begin() + (first + r) * kCifarPixels);
    }
  }
  return data;
}

ImageSplits load_cifar10(const std::string& dir, int64_t limit) {
  std::vector<std::string> train_files;
  for (int i = 1; i <= 5; ++i) train_files.push_back(dir + "/data_batch_" + std::to_string(i) + ".bin");
  ImageSplits splits{read_cifar10_files(train_files, limit), read_cifar10_files({dir + "/test_batch.bin"}, limit)};
  const std::string meta = dir + "/batches.meta.txt";
  if (fs::exists(meta)) {
    std::vector<std::string> names = read_class_names(meta);
    if (static_cast<int64_t>(names.size()) != kCifarClasses) {
      throw std::runtime_error(meta + " names " + std::to_string(names.size()) + " classes, expected 10");
    }
    splits.train.class_names = names;
    splits.val.class_names = std::move(names);
  }
  return splits;
}

// ---------------------------------------------------------------- IDX

namespace {

// zlib reads gzip streams and, transparently, uncompressed files: one reader serves both.
class GzReader {
 public:
  explicit GzReader(std::string path) : path_(std::move(path)), file_(gzopen(path_.c_str(), "rb")) {
    if (file_ == nullptr) throw std::runtime_error("cannot open IDX file " + path_);
    gzbuffer(file_, 1 << 20);
  }
  GzReader(const GzReader&) = delete;
  GzReader& operator=(const GzReader&) = delete;
  ~GzReader() { gzclose(file_); }

  const std::string& path() const { return path_; }

  void read_exact(void* dst, int64_t bytes, const char* what) {
    auto* out = static_cast<char*>(dst);
    while (bytes > 0) {
      const unsigned chunk = static_cast<unsigned>(std::min<int64_t>(bytes, 1 << 30));
      const int got = gzread(file_, out, chunk);
      if (got < 0) {
        int code = 0;
        throw std::runtime_error("IDX file " + path_ + ": cannot read " + what + ": " + gzerror(file_, &code));
      }
      if (got == 0) throw std::runtime_error("IDX file " + path_ + " is truncated in its " + what);
      out += got;
      bytes -= got;
    }
  }

  uint32_t read_big_endian_u32(const char* what) {
    uint8_t b[4];
    read_exact(b, 4, what);
    return (uint32_t{b[0]} << 24) | (uint32_t{b[1]} << 16) | (uint32_t{b[2]} << 8) | uint32_t{b[3]};
  }

  void expect_end() {
    char extra;
    if (gzread(file_, &extra, 1) != 0) throw std::runtime_error("IDX file " + path_ + " has trailing bytes after its data");
  }

 private:
  std::string path_;
  gzFile file_;
};

void expect_magic(GzReader& in, uint32_t expected) {
  const uint32_t magic = in.read_big_endian_u32("header");
  if (magic != expected) {
    char message[96];
    std::snprintf(message, sizeof message, " has magic number 0x%08x, expected 0x%08x", magic, expected);
    throw std::runtime_error("IDX file " + in.path() + message);
  }
}

std::string existing_plain_or_gz(const std::string& path) {
  if (fs::exists(path)) return path;
  if (fs::exists(path + ".gz")) return path + ".gz";
  throw std::runtime_error("IDX file " + path + " (or " + path + ".gz) not found");
}

}  // namespace

ImageDataset read_idx(const std::string& images_path, const std::string& labels_path, int64_t num_classes,
                      int64_t limit) {
  ImageDataset data;
  data.channels = 1;
  data.num_classes = num_classes;

  GzReader images(images_path);
  expect_magic(images, 0x00000803);
  const int64_t count = images.read_big_endian_u32("header");
  data.height = images.read_big_endian_u32("header");
  data.width = images.read_big_endian_u32("header");
  data.pixels.resize(static_cast<size_t>(count * data.image_numel()));
  images.read_exact(data.pixels.data(), static_cast<int64_t>(data.pixels.size()), "pixels");
  images.expect_end();

  GzReader labels(labels_path);
  expect_magic(labels, 0x00000801);
  const int64_t label_count = labels.read_big_endian_u32("header");
  if (label_count != count) {
    throw std::runtime_error("IDX label file " + labels_path + " has " + std::to_string(label_count) +
                             " labels but image file " + images_path + " has " + std::to_string(count) + " images");
  }
  std::vector<uint8_t> raw_labels(static_cast<size_t>(count));
  labels.read_exact(raw_labels.data(), count, "labels");
  labels.expect_end();
  data.labels.assign(raw_labels.begin(), raw_labels.end());
  for (int64_t i = 0; i < count; ++i) {
    if (data.labels[i] >= num_classes) {
      throw std::runtime_error("IDX label file " + labels_path + ": label " + std::to_string(data.labels[i]) +
                               " of example " + std::to_string(i) + " is not below num_classes " +
                               std::to_string(num_classes));
    }
  }
  keep_first(data, limit);
  return data;
}

ImageSplits load_idx_dir(const std::string& dir, int64_t num_classes, int64_t limit) {
  auto split = [&](const std::string& prefix) {
    return read_idx(existing_plain_or_gz(dir + "/" + prefix + "-images-idx3-ubyte"),
                    existing_plain_or_gz(dir + "/" + prefix + "-labels-idx1-ubyte"), num_classes, limit);
  };
  return {split("train"), split("t10k")};
}

// ---------------------------------------------------------------- image folders

std::vector<uint8_t> square_resize_to_chw(const uint8_t* hwc, int64_t height, int64_t width, int64_t channels,
                                          int64_t size) {
  const int64_t side = std::min(height, width);
  const int64_t top = (height - side) / 2;
  const int64_t left = (width - side) / 2;
  // Per output coordinate: the two source coordinates (within the crop) and the weight of the second.
  struct Tap {
    int64_t first, second;
    float weight;
  };
  std::vector<Tap> taps(static_cast<size_t>(size));
  const double scale = static_cast<double>(side) / static_cast<double>(size);
  for (int64_t i = 0; i < size; ++i) {
    const double source = std::clamp((static_cast<double>(i) + 0.5) * scale - 0.5, 0.0, static_cast<double>(side - 1));
    const auto first = static_cast<int64_t>(source);
    taps[i] = {first, std::min(first + 1, side - 1), static_cast<float>(source - static_cast<double>(first))};
  }
  std::vector<uint8_t> chw(static_cast<size_t>(channels * size * size));
  for (int64_t c = 0; c < channels; ++c) {
    for (int64_t y = 0; y < size; ++y) {
      const Tap ty = taps[y];
      const uint8_t* row0 = hwc + ((top + ty.first) * width + left) * channels + c;
      const uint8_t* row1 = hwc + ((top + ty.second) * width + left) * channels + c;
      for (int64_t x = 0; x < size; ++x) {
        const Tap tx = taps[x];
        const float upper = row0[tx.first * channels] + tx.weight * (row0[tx.second * channels] - row0[tx.first * channels]);
        const float lower = row1[tx.first * channels] + tx.weight * (row1[tx.second * channels] - row1[tx.first * channels]);
        const float value = upper + ty.weight * (lower - upper);
        chw[(c * size + y) * size + x] = static_cast<uint8_t>(std::lround(std::clamp(value, 0.0f, 255.0f)));
      }
    }
  }
  return chw;
}

namespace {

struct LabelledFile {
  std::string path;
  int64_t label;
};

bool has_image_extension(const fs::path& path) {
  std::string ext = path.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return ext == ".png" || ext == ".jpg" || ext == ".jpeg";
}

std::vector<std::string> sorted_entries(const std::string& dir, bool directories) {
  if (!fs::is_directory(dir)) throw std::runtime_error("image folder " + dir + " is not a directory");
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir)) {
    const bool wanted = directories ? entry.is_directory() : entry.is_regular_file() && has_image_extension(entry.path());
    if (wanted) names.push_back(entry.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

std::vector<LabelledFile> list_labelled_files(const std::string& dir, const std::vector<std::string>& class_names) {
  std::vector<LabelledFile> files;
  for (const std::string& sub : sorted_entries(dir, true)) {
    const auto known = std::find(class_names.begin(), class_names.end(), sub);
    if (known == class_names.end()) {
      throw std::runtime_error("image folder " + dir + "/" + sub + " is not one of the training classes");
    }
    const int64_t label = known - class_names.begin();
    for (const std::string& name : sorted_entries(dir + "/" + sub, false)) files.push_back({dir + "/" + sub + "/" + name, label});
  }
  return files;
}

ImageDataset decode_images(const std::vector<LabelledFile>& files, const ImageFolderOptions& options,
                           const std::vector<std::string>& class_names) {
  ImageDataset data;
  data.channels = options.channels;
  data.height = options.image_size;
  data.width = options.image_size;
  data.num_classes = static_cast<int64_t>(class_names.size());
  data.class_names = class_names;
  data.pixels.reserve(files.size() * static_cast<size_t>(data.image_numel()));
  for (const LabelledFile& file : files) {
    int width = 0, height = 0, file_channels = 0;
    stbi_uc* decoded = stbi_load(file.path.c_str(), &width, &height, &file_channels, static_cast<int>(options.channels));
    if (decoded == nullptr) {
      throw std::runtime_error("cannot read image " + file.path + ": " + stbi_failure_reason());
    }
    const std::vector<uint8_t> chw = square_resize_to_chw(decoded, height, width, options.channels, options.image_size);
    stbi_image_free(decoded);
    data.pixels.insert(data.pixels.end(), chw.begin(), chw.end());
    data.labels.push_back(file.label);
  }
  return data;
}

}  // namespace

ImageSplits load_image_folder(const ImageFolderOptions& options) {
  if (options.channels != 1 && options.channels != 3) {
    throw std::invalid_argument("image folder channels must be 1 or 3, got " + std::to_string(options.channels));
  }
  if (options.image_size <= 0) {
    throw std::invalid_argument("image folder image_size must be positive, got " + std::to_string(options.image_size));
  }
  const std::vector<std::string> class_names = sorted_entries(options.train_dir, true);
  if (class_names.empty()) throw std::runtime_error("image folder " + options.train_dir + " has no class subfolders");

  std::vector<LabelledFile> train = list_labelled_files(options.train_dir, class_names);
  std::vector<LabelledFile> val;
  if (!options.val_dir.empty()) {
    val = list_labelled_files(options.val_dir, class_names);
  } else {
    if (!(options.val_fraction >= 0.0 && options.val_fraction < 1.0)) {
      throw std::invalid_argument("image folder val_fraction must be in [0, 1), got " + std::to_string(options.val_fraction));
    }
    const auto count = static_cast<int64_t>(train.size());
    const auto val_count = static_cast<int64_t>(std::llround(options.val_fraction * static_cast<double>(count)));
    const std::vector<int64_t> order = seeded_permutation(count, rng_key(options.seed, RngStream::FolderSplit, {}));
    std::vector<bool> held_out(static_cast<size_t>(count), false);
    for (int64_t i = 0; i < val_count; ++i) held_out[order[i]] = true;
    std::vector<LabelledFile> kept;
    for (int64_t i = 0; i < count; ++i) (held_out[i] ? val : kept).push_back(std::move(train[i]));
    train = std::move(kept);
  }
  for (auto* files : {&train, &val}) {
    if (options.limit > 0 && static_cast<int64_t>(files->size()) > options.limit) files->resize(options.limit);
  }
  return {decode_images(train, options, class_names), decode_images(val, options, class_names)};
}

}  // namespace ml
