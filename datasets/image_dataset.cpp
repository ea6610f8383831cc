#include "datasets/image_dataset.h"

#include <zlib.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <csetjmp>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>

#define STB_IMAGE_IMPLEMENTATION
// PNG only: JPEG files go to libjpeg-turbo (decode_jpeg below).
#define STBI_ONLY_PNG
// Failure reasons as sentences ("Corrupt PNG") rather than stb's internal codes ("IDA").
#define STBI_FAILURE_USERMSG
#include <jpeglib.h>  // after <cstdio>, which it needs
#include <stb_image.h>

#include "datasets/rng.h"
#include "framework/io/atomic_file.h"

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

ImageDataset read_cifar10_files(const std::vector<std::string>& files, int64_t limit, int64_t records_per_file) {
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
    if (records_per_file > 0 && bytes != records_per_file * kCifarRecord) {
      throw std::runtime_error("CIFAR-10 file " + file + " holds " + std::to_string(bytes / kCifarRecord) +
                               " records; a CIFAR-10 batch file holds " + std::to_string(records_per_file) + " (" +
                               std::to_string(records_per_file * kCifarRecord) +
                               " bytes): cut short, or not the CIFAR-10 binary version");
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

ImageSplits load_cifar10(const std::string& dir, int64_t limit, int64_t records_per_file) {
  std::vector<std::string> train_files;
  for (int i = 1; i <= 5; ++i) train_files.push_back(dir + "/data_batch_" + std::to_string(i) + ".bin");
  ImageSplits splits{read_cifar10_files(train_files, limit, records_per_file),
                     read_cifar10_files({dir + "/test_batch.bin"}, limit, records_per_file)};
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
  constexpr int64_t kMaxSide = 1 << 16;
  if (data.height == 0 || data.width == 0 || data.height > kMaxSide || data.width > kMaxSide)
    throw std::runtime_error("IDX file " + images_path + " announces " + std::to_string(data.height) + " x " +
                             std::to_string(data.width) + " images (damaged header?)");
  // The header's count is only a claim (the file may be compressed): read a chunk at a time, so
  // that a damaged count fails as a truncated file instead of allocating what it announces.
  const int64_t total = count * data.image_numel();
  constexpr int64_t kChunk = int64_t{1} << 20;
  for (int64_t done = 0; done < total;) {
    const int64_t chunk = std::min(kChunk, total - done);
    data.pixels.resize(static_cast<size_t>(done + chunk));
    images.read_exact(data.pixels.data() + done, chunk, "pixels");
    done += chunk;
  }
  images.expect_end();

  GzReader labels(labels_path);
  expect_magic(labels, 0x00000801);
  const int64_t label_count = labels.read_big_endian_u32("header");
  if (label_count != count) {
    throw std::runtime_error("IDX label file " + labels_path + " has " + std::to_string(label_count) +
                             " labels but image file " + images_path + " has " + std::to_string(count) + " images");
  }
  std::vector<uint8_t> raw_labels(static_cast<size_t>(count));  // count images were read: a sane size
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

const std::string kPngSignature("\x89PNG\r\n\x1a\n", 8);
bool has_png_signature(const std::string& bytes) { return bytes.compare(0, kPngSignature.size(), kPngSignature) == 0; }
// Larger images are refused before decoding: the decoders would allocate width * height * channels
// bytes for whatever size a (possibly damaged) header announces.
constexpr int64_t kMaxImagePixels = int64_t{1} << 26;

void check_pixel_count(const std::string& path, int64_t width, int64_t height) {
  if (width * height > kMaxImagePixels)
    throw std::runtime_error("image " + path + " is " + std::to_string(width) + " x " + std::to_string(height) +
                             " pixels, more than the " + std::to_string(kMaxImagePixels) + " muonlab reads");
}

std::string lowercase_extension(const fs::path& path) {
  std::string ext = path.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return ext;
}

uint32_t big_endian_u32(const std::string& bytes, size_t offset) {
  const auto byte = [&](size_t i) { return static_cast<uint32_t>(static_cast<unsigned char>(bytes[offset + i])); };
  return (byte(0) << 24) | (byte(1) << 16) | (byte(2) << 8) | byte(3);
}

std::string hex32(uint32_t value) {
  char text[16];
  std::snprintf(text, sizeof text, "%08x", value);
  return text;
}

}  // namespace

void check_png_structure(const std::string& bytes, const std::string& path) {
  const auto fail = [&](const std::string& why) {
    throw std::runtime_error("image " + path + " is not a valid PNG: " + why);
  };
  if (!has_png_signature(bytes)) fail("it does not start with the PNG signature");
  size_t offset = kPngSignature.size();
  for (int64_t index = 0;; ++index) {
    const std::string at = " at byte " + std::to_string(offset);
    if (offset + 8 > bytes.size()) fail("the file ends" + at + " before the IEND chunk (cut short)");
    const uint32_t length = big_endian_u32(bytes, offset);
    const std::string type = bytes.substr(offset + 4, 4);
    if (!std::all_of(type.begin(), type.end(), [](char c) { return std::isalpha(static_cast<unsigned char>(c)); }))
      fail("chunk " + std::to_string(index) + at + " has type bytes 0x" + hex32(big_endian_u32(bytes, offset + 4)) +
           ", not a chunk name (damaged)");
    if (length > bytes.size() - offset - 8 || bytes.size() - offset - 8 - length < 4)
      fail("chunk " + type + at + " announces " + std::to_string(length) + " bytes, more than the file holds (cut short)");
    if (index == 0 && type != "IHDR") fail("the first chunk is " + type + ", not IHDR");
    const auto* chunk = reinterpret_cast<const Bytef*>(bytes.data() + offset + 4);
    const auto computed = static_cast<uint32_t>(crc32(crc32(0L, Z_NULL, 0), chunk, length + 4));
    const uint32_t stored = big_endian_u32(bytes, offset + 8 + length);
    if (computed != stored)
      fail("chunk " + type + at + " has crc32 " + hex32(computed) + " but records " + hex32(stored) + " (damaged bytes)");
    if (type == "IEND") return;
    offset += 12 + static_cast<size_t>(length);
  }
}

namespace {

// JPEG files are decoded by libjpeg-turbo rather than stb_image (Debian's 2.27), whose decoder,
// fed damaged data, wrote past a Huffman table of more than 256 codes and read past the end of the
// entropy-coded data (UBSan: shifts of 33 bits), decoding made-up pixels without an error (both
// found by tests/test_fuzz.cpp). libjpeg reports a fatal error through error_exit and damaged data
// (a bad Huffman code, data cut short) as a warning, emit_message(-1), after which it would go on
// with made-up pixels too: both end the decoding here, with libjpeg's message.
struct JpegErrors {
  jpeg_error_mgr manager;  // first: libjpeg's pointer to it is a pointer to JpegErrors
  std::jmp_buf exit;
  char message[JMSG_LENGTH_MAX];
};

[[noreturn]] void jpeg_fail(j_common_ptr info) {
  JpegErrors* errors = reinterpret_cast<JpegErrors*>(info->err);
  errors->manager.format_message(info, errors->message);
  std::longjmp(errors->exit, 1);
}

void jpeg_message(j_common_ptr info, int level) {
  if (level < 0) jpeg_fail(info);  // a warning: damaged data (levels 0 and up are traces)
}

// stb_image appends each IDAT chunk's bytes to the image data so far, a null pointer before the
// first chunk that holds any: an empty one first made it memcpy from a null pointer (UBSan; found by
// tests/test_fuzz.cpp). Empty IDAT chunks add nothing to the image, so the decoder gets the file
// without them: `bytes` (a PNG that passed check_png_structure) without its empty IDAT chunks, or
// an empty string where it has none (most files: no copy).
std::string without_empty_idat_chunks(const std::string& bytes) {
  if (bytes.find(std::string("\0\0\0\0IDAT", 8)) == std::string::npos) return std::string();
  std::string kept = kPngSignature;
  for (size_t offset = kPngSignature.size();;) {
    const size_t chunk = 12 + static_cast<size_t>(big_endian_u32(bytes, offset));
    const bool empty_idat = chunk == 12 && bytes.compare(offset + 4, 4, "IDAT") == 0;
    if (!empty_idat) kept.append(bytes, offset, chunk);
    if (bytes.compare(offset + 4, 4, "IEND") == 0) return kept;
    offset += chunk;
  }
}

bool is_jpeg(const std::string& bytes) { return bytes.compare(0, 2, "\xff\xd8") == 0; }

// A JPEG file's pixels into `hwc`, interleaved, `channels` (1 or 3) values each. No object with a
// destructor lives here across the calls into libjpeg that may jump back to setjmp. The two locals
// changed after setjmp, `info` and `errors`, have their addresses held by libjpeg, so they live in
// memory and the jump finds them as they were left (libjpeg's own example.c keeps them so); the
// pixels and the size go to the caller's objects.
void decode_jpeg(const std::string& bytes, const std::string& path, int64_t channels, std::vector<uint8_t>& hwc,
                 int& width, int& height) {
  jpeg_decompress_struct info;
  JpegErrors errors;
  info.err = jpeg_std_error(&errors.manager);
  errors.manager.error_exit = jpeg_fail;
  errors.manager.emit_message = jpeg_message;
  if (setjmp(errors.exit)) {
    jpeg_destroy_decompress(&info);
    throw std::runtime_error("image " + path + " is not a valid JPEG: " + errors.message);
  }
  jpeg_create_decompress(&info);
  jpeg_mem_src(&info, reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size());
  jpeg_read_header(&info, TRUE);
  try {
    check_pixel_count(path, info.image_width, info.image_height);
    info.out_color_space = channels == 1 ? JCS_GRAYSCALE : JCS_RGB;
    jpeg_start_decompress(&info);
    hwc.resize(static_cast<size_t>(info.output_width) * info.output_components * info.output_height);
  } catch (...) {
    jpeg_destroy_decompress(&info);
    throw;
  }
  const size_t row_bytes = static_cast<size_t>(info.output_width) * info.output_components;
  while (info.output_scanline < info.output_height) {
    JSAMPROW row = hwc.data() + info.output_scanline * row_bytes;
    jpeg_read_scanlines(&info, &row, 1);
  }
  jpeg_finish_decompress(&info);
  width = static_cast<int>(info.output_width);
  height = static_cast<int>(info.output_height);
  jpeg_destroy_decompress(&info);
}

}  // namespace

std::vector<uint8_t> decode_image(const std::string& bytes, const std::string& path, int64_t channels, int64_t size) {
  const bool png_signature = has_png_signature(bytes);
  if (lowercase_extension(path) == ".png" || png_signature) check_png_structure(bytes, path);
  if (is_jpeg(bytes)) {
    std::vector<uint8_t> hwc;
    int width = 0, height = 0;
    decode_jpeg(bytes, path, channels, hwc, width, height);
    return square_resize_to_chw(hwc.data(), height, width, channels, size);
  }
  if (bytes.size() > static_cast<size_t>(std::numeric_limits<int>::max()))
    throw std::runtime_error("image " + path + " is larger than 2 GB");
  // stb decodes PNGs only (STBI_ONLY_PNG) and refuses anything else as it is.
  const std::string stripped = png_signature ? without_empty_idat_chunks(bytes) : std::string();
  const std::string& png = stripped.empty() ? bytes : stripped;
  const auto* data = reinterpret_cast<const stbi_uc*>(png.data());
  const int length = static_cast<int>(png.size());
  int width = 0, height = 0, file_channels = 0;
  if (!stbi_info_from_memory(data, length, &width, &height, &file_channels))
    throw std::runtime_error("cannot read image " + path + ": " + stbi_failure_reason());
  check_pixel_count(path, width, height);
  const std::unique_ptr<stbi_uc, void (*)(void*)> decoded(
      stbi_load_from_memory(data, length, &width, &height, &file_channels, static_cast<int>(channels)), stbi_image_free);
  if (!decoded) throw std::runtime_error("cannot read image " + path + ": " + stbi_failure_reason());
  return square_resize_to_chw(decoded.get(), height, width, channels, size);
}

namespace {

struct LabelledFile {
  std::string path;
  int64_t label;
};

bool has_image_extension(const fs::path& path) {
  const std::string ext = lowercase_extension(path);
  return ext == ".png" || ext == ".jpg" || ext == ".jpeg";
}

// The entries of `dir`, sorted by name, split into those `wanted` accepts and the others.
struct Listing {
  std::vector<std::string> wanted, others;
};

Listing list_dir(const std::string& dir, const std::function<bool(const fs::directory_entry&)>& wanted) {
  if (!fs::is_directory(dir)) throw std::runtime_error("image folder " + dir + " is not a directory");
  Listing listing;
  for (const auto& entry : fs::directory_iterator(dir))
    (wanted(entry) ? listing.wanted : listing.others).push_back(entry.path().filename().string());
  std::sort(listing.wanted.begin(), listing.wanted.end());
  std::sort(listing.others.begin(), listing.others.end());
  return listing;
}

// Entries the reader would not read are refused, so that no image is dropped without a word.
void refuse_others(const std::string& dir, const std::vector<std::string>& others, const std::string& expected) {
  if (others.empty()) return;
  throw std::runtime_error("image folder " + dir + " holds " + std::to_string(others.size()) + " entr" +
                           (others.size() == 1 ? "y" : "ies") + " that " + (others.size() == 1 ? "is" : "are") +
                           " not " + expected + ", e.g. " + others.front() + "; move " +
                           (others.size() == 1 ? "it" : "them") + " out of the folder");
}

bool is_class_folder(const fs::directory_entry& entry) { return entry.is_directory(); }
bool is_image_file(const fs::directory_entry& entry) { return entry.is_regular_file() && has_image_extension(entry.path()); }

std::vector<std::string> class_folders(const std::string& dir) {
  const Listing listing = list_dir(dir, is_class_folder);
  if (listing.wanted.empty())
    throw std::runtime_error("image folder " + dir + " has no class subfolders (the images of each class go into a "
                             "subfolder named after the class)");
  refuse_others(dir, listing.others, "a class folder");
  return listing.wanted;
}

std::vector<LabelledFile> list_labelled_files(const std::string& dir, const std::vector<std::string>& class_names) {
  std::vector<LabelledFile> files;
  for (const std::string& sub : class_folders(dir)) {
    const auto known = std::find(class_names.begin(), class_names.end(), sub);
    if (known == class_names.end()) {
      throw std::runtime_error("image folder " + dir + "/" + sub + " is not one of the training classes");
    }
    const int64_t label = known - class_names.begin();
    const std::string class_dir = dir + "/" + sub;
    const Listing listing = list_dir(class_dir, is_image_file);
    refuse_others(class_dir, listing.others, "a .png, .jpg or .jpeg file");
    if (listing.wanted.empty())
      throw std::runtime_error("image folder " + class_dir + " holds no images: an empty class; add images or remove it");
    for (const std::string& name : listing.wanted) files.push_back({class_dir + "/" + name, label});
  }
  return files;
}

// Keeps a seeded sample of `limit` of the files, in their order (class order).
void keep_sample(std::vector<LabelledFile>& files, int64_t limit, uint64_t seed, uint64_t split) {
  const auto count = static_cast<int64_t>(files.size());
  if (limit <= 0 || limit >= count) return;
  std::vector<int64_t> chosen = seeded_permutation(count, rng_key(seed, RngStream::FolderLimit, {split}));
  chosen.resize(static_cast<size_t>(limit));
  std::sort(chosen.begin(), chosen.end());
  std::vector<LabelledFile> sample;
  for (const int64_t index : chosen) sample.push_back(std::move(files[index]));
  files = std::move(sample);
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
    const std::vector<uint8_t> chw = decode_image(read_file(file.path), file.path, options.channels, options.image_size);
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
  const std::vector<std::string> class_names = class_folders(options.train_dir);

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
  keep_sample(train, options.limit_train, options.seed, 0);
  keep_sample(val, options.limit_val, options.seed, 1);
  return {decode_images(train, options, class_names), decode_images(val, options, class_names)};
}

}  // namespace ml
