// Tests of the data layer: readers on small generated files (good, truncated and corrupt ones)
// and on the real data sets when present, batching determinism, augmentation and prefetching.
#include <gtest/gtest.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <numeric>
#include <set>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

// stb's header trips -Wextra; the pragma keeps the test build quiet even where stb is not a system include.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb_image_write.h>
#pragma GCC diagnostic pop

#include <jpeglib.h>  // after <cstdio>, which it needs

#include "datasets/batch.h"
#include "datasets/image_batcher.h"
#include "datasets/image_dataset.h"
#include "datasets/prefetch.h"
#include "datasets/rng.h"
#include "datasets/synthetic.h"
#include "datasets/text_dataset.h"
#include "framework/io/atomic_file.h"
#include "tests/temp_dir.h"

namespace ml {
namespace {

namespace fs = std::filesystem;

const std::string kSharedData = MUONLAB_SOURCE_DIR "/../shared/data";
const std::string kFashionMnist = "/usr/share/datasets/fashion-mnist";

void write_bytes(const std::string& path, const std::vector<uint8_t>& bytes) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
}

// Runs `action`, expecting it to throw an exception whose message contains every one of `parts`.
void expect_error_mentions(const std::function<void()>& action, const std::vector<std::string>& parts) {
  try {
    action();
  } catch (const std::exception& e) {
    const std::string message = e.what();
    for (const std::string& part : parts) EXPECT_NE(message.find(part), std::string::npos) << "message: " << message;
    return;
  }
  ADD_FAILURE() << "no exception thrown";
}

// ---------------------------------------------------------------- CIFAR-10

uint8_t cifar_pixel(int64_t record, int64_t j) { return static_cast<uint8_t>((record * 7 + j * 3) & 255); }

// `count` records numbered from `first`: label (first + r) % 10, pixels from cifar_pixel.
std::vector<uint8_t> cifar_records(int64_t first, int64_t count) {
  std::vector<uint8_t> bytes;
  for (int64_t r = first; r < first + count; ++r) {
    bytes.push_back(static_cast<uint8_t>(r % 10));
    for (int64_t j = 0; j < 3072; ++j) bytes.push_back(cifar_pixel(r, j));
  }
  return bytes;
}

TEST(Cifar10, ReadsRecordsAcrossFilesInOrder) {
  TempDir dir;
  write_bytes(dir.file("a.bin"), cifar_records(0, 3));
  write_bytes(dir.file("b.bin"), cifar_records(3, 2));
  const ImageDataset data = read_cifar10_files({dir.file("a.bin"), dir.file("b.bin")});
  ASSERT_EQ(data.size(), 5);
  EXPECT_EQ(data.channels, 3);
  EXPECT_EQ(data.height, 32);
  EXPECT_EQ(data.width, 32);
  EXPECT_EQ(data.num_classes, 10);
  for (int64_t r = 0; r < 5; ++r) {
    EXPECT_EQ(data.labels[r], r % 10);
    for (int64_t j : {0, 1, 1023, 1024, 3071}) EXPECT_EQ(data.image(r)[j], cifar_pixel(r, j));
  }
}

TEST(Cifar10, LimitKeepsTheFirstExamples) {
  TempDir dir;
  write_bytes(dir.file("a.bin"), cifar_records(0, 3));
  write_bytes(dir.file("b.bin"), cifar_records(3, 3));
  const ImageDataset four = read_cifar10_files({dir.file("a.bin"), dir.file("b.bin")}, 4);
  ASSERT_EQ(four.size(), 4);
  EXPECT_EQ(four.pixels.size(), 4u * 3072);
  EXPECT_EQ(four.labels[3], 3);
  EXPECT_EQ(four.image(3)[5], cifar_pixel(3, 5));
  // The second file is not even opened once the limit is reached.
  EXPECT_EQ(read_cifar10_files({dir.file("a.bin"), dir.file("missing.bin")}, 2).size(), 2);
}

TEST(Cifar10, TruncatedFileIsNamed) {
  TempDir dir;
  std::vector<uint8_t> bytes = cifar_records(0, 2);
  bytes.resize(bytes.size() - 5);
  write_bytes(dir.file("data_batch_1.bin"), bytes);
  expect_error_mentions([&] { read_cifar10_files({dir.file("data_batch_1.bin")}); },
                        {dir.file("data_batch_1.bin"), "3073"});
  write_bytes(dir.file("empty.bin"), {});
  expect_error_mentions([&] { read_cifar10_files({dir.file("empty.bin")}); }, {dir.file("empty.bin")});
}

TEST(Cifar10, MissingFileIsNamed) {
  TempDir dir;
  expect_error_mentions([&] { load_cifar10(dir.file("nowhere")); }, {"data_batch_1.bin", "nowhere"});
}

TEST(Cifar10, LabelOutOfRangeIsRejected) {
  TempDir dir;
  std::vector<uint8_t> bytes = cifar_records(0, 3);
  bytes[2 * 3073] = 10;
  write_bytes(dir.file("bad.bin"), bytes);
  expect_error_mentions([&] { read_cifar10_files({dir.file("bad.bin")}); }, {dir.file("bad.bin"), "record 2", "label 10"});
}

TEST(Cifar10, LoadsTheBatchFolderWithClassNames) {
  TempDir dir;
  for (int i = 1; i <= 5; ++i) write_bytes(dir.file("data_batch_" + std::to_string(i) + ".bin"), cifar_records(2 * i, 2));
  write_bytes(dir.file("test_batch.bin"), cifar_records(0, 2));
  write_text(dir.file("batches.meta.txt"), "airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n\n");
  const ImageSplits splits = load_cifar10(dir.file(""), 0, 2);
  EXPECT_EQ(splits.train.size(), 10);
  EXPECT_EQ(splits.val.size(), 2);
  EXPECT_EQ(splits.train.labels[0], 2);  // first record of data_batch_1
  ASSERT_EQ(splits.train.class_names.size(), 10u);
  EXPECT_EQ(splits.train.class_names[9], "truck");
  EXPECT_EQ(splits.val.class_names[0], "airplane");

  write_text(dir.file("batches.meta.txt"), "airplane\nautomobile\n");
  expect_error_mentions([&] { load_cifar10(dir.file(""), 0, 2); }, {"batches.meta.txt", "2 classes"});
}

TEST(Cifar10, ABatchFileOfAnotherRecordCountIsRefused) {
  TempDir dir;
  for (int i = 1; i <= 5; ++i) write_bytes(dir.file("data_batch_" + std::to_string(i) + ".bin"), cifar_records(0, 2));
  write_bytes(dir.file("test_batch.bin"), cifar_records(0, 2));
  // The real files hold 10000 records each: these are cut short.
  expect_error_mentions([&] { load_cifar10(dir.path()); },
                        {dir.file("data_batch_1.bin"), "holds 2 records", "10000 (30730000 bytes)"});
  write_bytes(dir.file("data_batch_3.bin"), cifar_records(0, 3));
  expect_error_mentions([&] { load_cifar10(dir.path(), 0, 2); }, {dir.file("data_batch_3.bin"), "holds 3 records"});
}

TEST(Cifar10, RealDatasetHasBalancedClasses) {
  const std::string dir = kSharedData + "/cifar-10-batches-bin";
  if (!fs::exists(dir + "/data_batch_1.bin")) GTEST_SKIP() << "no CIFAR-10 at " << dir;
  const ImageSplits splits = load_cifar10(dir);
  ASSERT_EQ(splits.train.size(), 50000);
  ASSERT_EQ(splits.val.size(), 10000);
  std::vector<int64_t> train_histogram(10, 0), val_histogram(10, 0);
  for (int64_t label : splits.train.labels) train_histogram[label]++;
  for (int64_t label : splits.val.labels) val_histogram[label]++;
  EXPECT_EQ(train_histogram, std::vector<int64_t>(10, 5000));
  EXPECT_EQ(val_histogram, std::vector<int64_t>(10, 1000));
  ASSERT_EQ(splits.train.class_names.size(), 10u);
  EXPECT_EQ(splits.train.class_names[0], "airplane");

  // The well-known CIFAR-10 channel statistics (this copy is re-encoded, hence the tolerance).
  ImageBatcherOptions options;
  options.batch_size = 256;
  const ImageBatcher batcher(std::make_shared<const ImageDataset>(splits.train), nullptr, options);
  const std::vector<float> mean = {0.4914f, 0.4822f, 0.4465f}, stddev = {0.2470f, 0.2435f, 0.2616f};
  for (int c = 0; c < 3; ++c) {
    EXPECT_NEAR(batcher.channel_mean()[c], mean[c], 0.01f);
    EXPECT_NEAR(batcher.channel_std()[c], stddev[c], 0.01f);
  }
  EXPECT_EQ(batcher.steps_per_epoch(), 195);
}

// ---------------------------------------------------------------- IDX

void put_big_endian(std::vector<uint8_t>& bytes, uint32_t value) {
  for (int shift = 24; shift >= 0; shift -= 8) bytes.push_back(static_cast<uint8_t>(value >> shift));
}

std::vector<uint8_t> idx_images(uint32_t count, uint32_t rows, uint32_t cols) {
  std::vector<uint8_t> bytes;
  for (uint32_t word : {0x803u, count, rows, cols}) put_big_endian(bytes, word);
  for (uint32_t i = 0; i < count * rows * cols; ++i) bytes.push_back(static_cast<uint8_t>(i * 5));
  return bytes;
}

std::vector<uint8_t> idx_labels(uint32_t count) {
  std::vector<uint8_t> bytes;
  for (uint32_t word : {0x801u, count}) put_big_endian(bytes, word);
  for (uint32_t i = 0; i < count; ++i) bytes.push_back(static_cast<uint8_t>((i * 3) % 10));
  return bytes;
}

void write_gzip(const std::string& path, const std::vector<uint8_t>& bytes) {
  gzFile file = gzopen(path.c_str(), "wb");
  ASSERT_NE(file, nullptr);
  ASSERT_EQ(gzwrite(file, bytes.data(), static_cast<unsigned>(bytes.size())), static_cast<int>(bytes.size()));
  gzclose(file);
}

void expect_small_idx(const ImageDataset& data) {
  ASSERT_EQ(data.size(), 4);
  EXPECT_EQ(data.channels, 1);
  EXPECT_EQ(data.height, 2);
  EXPECT_EQ(data.width, 3);
  EXPECT_EQ(data.labels, (std::vector<int64_t>{0, 3, 6, 9}));
  EXPECT_EQ(data.image(2)[1], static_cast<uint8_t>(13 * 5));
}

TEST(Idx, ReadsPlainAndGzipFiles) {
  TempDir dir;
  write_bytes(dir.file("images"), idx_images(4, 2, 3));
  write_bytes(dir.file("labels"), idx_labels(4));
  write_gzip(dir.file("images.gz"), idx_images(4, 2, 3));
  write_gzip(dir.file("labels.gz"), idx_labels(4));
  expect_small_idx(read_idx(dir.file("images"), dir.file("labels")));
  expect_small_idx(read_idx(dir.file("images.gz"), dir.file("labels.gz")));
  EXPECT_EQ(read_idx(dir.file("images.gz"), dir.file("labels"), 10, 3).size(), 3);
}

TEST(Idx, FolderAcceptsPlainOrGzipNames) {
  TempDir dir;
  write_gzip(dir.file("train-images-idx3-ubyte.gz"), idx_images(4, 2, 3));
  write_bytes(dir.file("train-labels-idx1-ubyte"), idx_labels(4));
  write_bytes(dir.file("t10k-images-idx3-ubyte"), idx_images(2, 2, 3));
  write_gzip(dir.file("t10k-labels-idx1-ubyte.gz"), idx_labels(2));
  const ImageSplits splits = load_idx_dir(dir.file(""));
  expect_small_idx(splits.train);
  EXPECT_EQ(splits.val.size(), 2);

  fs::remove(dir.file("t10k-labels-idx1-ubyte.gz"));
  expect_error_mentions([&] { load_idx_dir(dir.file("")); }, {"t10k-labels-idx1-ubyte", "not found"});
}

TEST(Idx, WrongMagicIsRejected) {
  TempDir dir;
  write_bytes(dir.file("labels"), idx_labels(4));
  // Labels where images are expected, and the reverse.
  expect_error_mentions([&] { read_idx(dir.file("labels"), dir.file("labels")); }, {dir.file("labels"), "0x00000801", "0x00000803"});
  write_bytes(dir.file("images"), idx_images(4, 2, 3));
  expect_error_mentions([&] { read_idx(dir.file("images"), dir.file("images")); }, {"0x00000803", "expected 0x00000801"});
}

TEST(Idx, TruncatedOrOversizedFilesAreRejected) {
  TempDir dir;
  write_bytes(dir.file("labels"), idx_labels(4));
  std::vector<uint8_t> images = idx_images(4, 2, 3);
  images.pop_back();
  write_gzip(dir.file("short.gz"), images);
  expect_error_mentions([&] { read_idx(dir.file("short.gz"), dir.file("labels")); }, {dir.file("short.gz"), "truncated"});
  write_bytes(dir.file("header_only"), {0, 0, 8});
  expect_error_mentions([&] { read_idx(dir.file("header_only"), dir.file("labels")); }, {dir.file("header_only"), "truncated"});
  images = idx_images(4, 2, 3);
  images.push_back(0);
  write_bytes(dir.file("long"), images);
  expect_error_mentions([&] { read_idx(dir.file("long"), dir.file("labels")); }, {dir.file("long"), "trailing"});
  expect_error_mentions([&] { read_idx(dir.file("absent"), dir.file("labels")); }, {dir.file("absent")});
}

TEST(Idx, CountMismatchAndBadLabelsAreRejected) {
  TempDir dir;
  write_bytes(dir.file("images"), idx_images(4, 2, 3));
  write_bytes(dir.file("labels3"), idx_labels(3));
  expect_error_mentions([&] { read_idx(dir.file("images"), dir.file("labels3")); }, {"3 labels", "4 images"});
  write_bytes(dir.file("labels"), idx_labels(4));
  // Labels go up to 9: with 5 classes the label 6 of example 2 is out of range.
  expect_error_mentions([&] { read_idx(dir.file("images"), dir.file("labels"), 5); }, {dir.file("labels"), "label 6", "example 2"});
}

TEST(Idx, RealFashionMnist) {
  if (!fs::exists(kFashionMnist)) GTEST_SKIP() << "no Fashion-MNIST at " << kFashionMnist;
  const ImageSplits splits = load_idx_dir(kFashionMnist);
  ASSERT_EQ(splits.train.size(), 60000);
  ASSERT_EQ(splits.val.size(), 10000);
  EXPECT_EQ(splits.train.height, 28);
  EXPECT_EQ(splits.train.width, 28);
  std::vector<int64_t> histogram(10, 0);
  for (int64_t label : splits.train.labels) histogram[label]++;
  EXPECT_EQ(histogram, std::vector<int64_t>(10, 6000));
}

// ---------------------------------------------------------------- image folders

// A solid-colour RGB PNG.
void write_png(const std::string& path, int width, int height, uint8_t r, uint8_t g, uint8_t b) {
  fs::create_directories(fs::path(path).parent_path());
  std::vector<uint8_t> pixels(static_cast<size_t>(width * height * 3));
  for (size_t i = 0; i < pixels.size(); i += 3) {
    pixels[i] = r;
    pixels[i + 1] = g;
    pixels[i + 2] = b;
  }
  ASSERT_NE(stbi_write_png(path.c_str(), width, height, 3, pixels.data(), width * 3), 0);
}

TEST(ImageFolder, ReadsClassesAndResizes) {
  TempDir dir;
  write_png(dir.file("train/dog/a.png"), 8, 6, 10, 20, 30);
  write_png(dir.file("train/cat/b.png"), 5, 5, 200, 100, 0);
  write_png(dir.file("train/cat/a.png"), 3, 7, 1, 2, 3);
  write_png(dir.file("val/dog/c.png"), 4, 4, 9, 9, 9);
  ImageFolderOptions options;
  options.train_dir = dir.file("train");
  options.val_dir = dir.file("val");
  options.image_size = 4;
  const ImageSplits splits = load_image_folder(options);
  EXPECT_EQ(splits.train.class_names, (std::vector<std::string>{"cat", "dog"}));
  ASSERT_EQ(splits.train.size(), 3);
  EXPECT_EQ(splits.train.labels, (std::vector<int64_t>{0, 0, 1}));  // cat/a, cat/b, dog/a
  EXPECT_EQ(splits.train.height, 4);
  // Solid images stay solid through crop and resize; CHW layout puts each channel's 16 pixels together.
  const uint8_t* cat_b = splits.train.image(1);
  EXPECT_EQ(cat_b[0], 200);
  EXPECT_EQ(cat_b[15], 200);
  EXPECT_EQ(cat_b[16], 100);
  EXPECT_EQ(cat_b[47], 0);
  ASSERT_EQ(splits.val.size(), 1);
  EXPECT_EQ(splits.val.labels[0], 1);

  options.channels = 1;
  const ImageSplits grey = load_image_folder(options);
  EXPECT_EQ(grey.train.image_numel(), 16);
}

TEST(ImageFolder, HoldsOutASeededFraction) {
  TempDir dir;
  for (int i = 0; i < 10; ++i) {
    write_png(dir.file("all/" + std::string(i % 2 ? "odd" : "even") + "/" + std::to_string(i) + ".png"), 2, 2,
              static_cast<uint8_t>(i * 20), 0, 0);
  }
  ImageFolderOptions options;
  options.train_dir = dir.file("all");
  options.image_size = 2;
  options.val_fraction = 0.3;
  auto red_values = [](const ImageDataset& data) {
    std::set<int> values;
    for (int64_t i = 0; i < data.size(); ++i) values.insert(data.image(i)[0]);
    return values;
  };
  options.seed = 1;
  const ImageSplits first = load_image_folder(options);
  ASSERT_EQ(first.train.size(), 7);
  ASSERT_EQ(first.val.size(), 3);
  std::set<int> all = red_values(first.train);
  for (int v : red_values(first.val)) EXPECT_TRUE(all.insert(v).second) << "image in both splits";
  EXPECT_EQ(all.size(), 10u);

  EXPECT_EQ(red_values(load_image_folder(options).val), red_values(first.val));
  options.seed = 2;
  EXPECT_NE(red_values(load_image_folder(options).val), red_values(first.val));

  options.limit_train = 2;
  options.limit_val = 2;
  const ImageSplits limited = load_image_folder(options);
  EXPECT_EQ(limited.train.size(), 2);
  EXPECT_EQ(limited.val.size(), 2);
}

TEST(ImageFolder, UnreadableImageIsNamed) {
  TempDir dir;
  write_png(dir.file("train/a/good.png"), 2, 2, 1, 1, 1);
  write_text(dir.file("train/a/broken.png"), "this is no PNG");
  ImageFolderOptions options;
  options.train_dir = dir.file("train");
  expect_error_mentions([&] { load_image_folder(options); }, {dir.file("train/a/broken.png")});
}

TEST(ImageFolder, EntriesItWouldSkipAndEmptyClassesAreRefusedNamingThem) {
  TempDir dir;
  for (const char* image : {"train/cat/a.png", "train/dog/b.png"}) write_png(dir.file(image), 2, 2, 1, 1, 1);
  ImageFolderOptions options;
  options.train_dir = dir.file("train");
  options.image_size = 2;
  EXPECT_EQ(load_image_folder(options).train.size() + load_image_folder(options).val.size(), 2);

  write_text(dir.file("train/cat/notes.txt"), "not an image");
  expect_error_mentions([&] { load_image_folder(options); },
                        {dir.file("train/cat"), "1 entry that is not a .png, .jpg or .jpeg file", "notes.txt"});
  fs::remove(dir.file("train/cat/notes.txt"));
  fs::create_directories(dir.file("train/cat/more"));
  expect_error_mentions([&] { load_image_folder(options); }, {dir.file("train/cat"), "more"});
  fs::remove(dir.file("train/cat/more"));
  write_png(dir.file("train/stray.png"), 2, 2, 1, 1, 1);
  expect_error_mentions([&] { load_image_folder(options); }, {dir.file("train"), "not a class folder", "stray.png"});
  fs::remove(dir.file("train/stray.png"));
  fs::create_directories(dir.file("train/empty"));
  expect_error_mentions([&] { load_image_folder(options); }, {dir.file("train/empty"), "no images", "empty class"});
}

TEST(ImageFolder, CorruptPngsNameTheFileAndTheReason) {
  TempDir dir;
  write_png(dir.file("good.png"), 4, 4, 10, 20, 30);
  const std::string good = read_file(dir.file("good.png"));
  const auto error_of = [&](const std::string& bytes, const std::string& name) {
    try {
      decode_image(bytes, dir.file(name), 3, 4);
    } catch (const std::runtime_error& error) {
      return std::string(error.what());
    }
    return std::string("no error");
  };
  EXPECT_EQ(decode_image(good, dir.file("good.png"), 3, 4).size(), 48u);
  const size_t idat = good.find("IDAT");
  ASSERT_NE(idat, std::string::npos);
  // A damaged byte inside the compressed pixels: only the chunk's CRC shows it (the decoder ignores CRCs).
  std::string flipped = good;
  flipped[idat + 6] ^= 0x01;
  const std::string crc_error = error_of(flipped, "flipped.png");
  EXPECT_EQ(crc_error.rfind("image " + dir.file("flipped.png") + " is not a valid PNG: chunk IDAT at byte " +
                                std::to_string(idat - 4) + " has crc32 ",
                            0),
            0u)
      << crc_error;
  EXPECT_NE(crc_error.find("(damaged bytes)"), std::string::npos) << crc_error;
  // A damaged chunk name: stb's own reason would be "IDA".
  std::string renamed = good;
  renamed[idat + 3] = '\0';
  EXPECT_NE(error_of(renamed, "renamed.png").find("has type bytes 0x49444100, not a chunk name (damaged)"), std::string::npos)
      << error_of(renamed, "renamed.png");
  EXPECT_NE(error_of(good.substr(0, good.size() / 2), "cut.png").find("cut short"), std::string::npos);
  EXPECT_NE(error_of("GIF89a", "x.png").find("does not start with the PNG signature"), std::string::npos);
  // Other formats get stb's reason as a sentence.
  EXPECT_EQ(error_of("not a jpeg at all", "x.jpg"), "cannot read image " + dir.file("x.jpg") +
                                                       ": Image not of any known type, or corrupt");
  // In a folder: the failing file is named.
  write_bytes(dir.file("train/a/flipped.png"), std::vector<uint8_t>(flipped.begin(), flipped.end()));
  ImageFolderOptions options;
  options.train_dir = dir.file("train");
  expect_error_mentions([&] { load_image_folder(options); }, {dir.file("train/a/flipped.png"), "crc32"});
}

TEST(ImageFolder, EmptyIdatChunksAddNothingToAPng) {
  TempDir dir;
  write_png(dir.file("a.png"), 4, 4, 10, 20, 30);
  const std::string png = read_file(dir.file("a.png"));
  // After IHDR (8 + 25 bytes), before the chunk with the pixels; found by the fuzz harness, where
  // stb_image then copied from a null pointer (UBSan).
  const uint32_t crc = static_cast<uint32_t>(crc32(crc32(0L, Z_NULL, 0), reinterpret_cast<const Bytef*>("IDAT"), 4));
  std::string empty_idat("\0\0\0\0IDAT", 8);
  for (int k = 0; k < 4; ++k) empty_idat.push_back(static_cast<char>(crc >> (24 - 8 * k)));
  const std::string with_empty = png.substr(0, 33) + empty_idat + png.substr(33);
  EXPECT_EQ(decode_image(with_empty, "b.png", 3, 4), decode_image(png, "a.png", 3, 4));
}

// A width x height JPEG of one colour, at quality 100, encoded by libjpeg.
std::string one_colour_jpeg(int width, int height, uint8_t r, uint8_t g, uint8_t b) {
  jpeg_compress_struct info;
  jpeg_error_mgr errors;
  info.err = jpeg_std_error(&errors);
  jpeg_create_compress(&info);
  unsigned char* out = nullptr;
  unsigned long size = 0;
  jpeg_mem_dest(&info, &out, &size);
  info.image_width = static_cast<JDIMENSION>(width);
  info.image_height = static_cast<JDIMENSION>(height);
  info.input_components = 3;
  info.in_color_space = JCS_RGB;
  jpeg_set_defaults(&info);
  jpeg_set_quality(&info, 100, TRUE);
  jpeg_start_compress(&info, TRUE);
  std::vector<uint8_t> row;
  for (int x = 0; x < width; ++x) row.insert(row.end(), {r, g, b});
  while (info.next_scanline < info.image_height) {
    JSAMPROW rows[1] = {row.data()};
    jpeg_write_scanlines(&info, rows, 1);
  }
  jpeg_finish_compress(&info);
  jpeg_destroy_compress(&info);
  const std::string bytes(reinterpret_cast<const char*>(out), size);
  std::free(out);
  return bytes;
}

TEST(ImageFolder, JpegsDecodeToTheirColoursInRgbAndGrey) {
  const std::string jpeg = one_colour_jpeg(6, 5, 10, 200, 60);
  const std::vector<uint8_t> rgb = decode_image(jpeg, "a.jpg", 3, 4);
  ASSERT_EQ(rgb.size(), 3u * 4 * 4);
  for (size_t i = 0; i < rgb.size(); ++i) EXPECT_NEAR(rgb[i], (i < 16 ? 10 : i < 32 ? 200 : 60), 2) << i;
  // Grey as JPEG's luma: 0.299 R + 0.587 G + 0.114 B.
  const std::vector<uint8_t> grey = decode_image(jpeg, "a.jpg", 1, 4);
  ASSERT_EQ(grey.size(), 16u);
  for (uint8_t value : grey) EXPECT_NEAR(value, 0.299 * 10 + 0.587 * 200 + 0.114 * 60, 2);
}

// Damaged JPEGs are refused with libjpeg's reason, warnings included: after one it would go on
// decoding made-up pixels. The two kept files were found by the fuzz harness, where stb_image
// (which decoded JPEGs before libjpeg) wrote past its Huffman table (ASan) and read past the end of
// the entropy-coded data (UBSan), returning an image.
TEST(ImageFolder, DamagedJpegsAreRefusedWithLibjpegsReason) {
  const std::string jpeg = one_colour_jpeg(16, 16, 90, 90, 90);
  expect_error_mentions([&] { decode_image(jpeg.substr(0, jpeg.size() - 40), "cut.jpg", 3, 4); },
                        {"image cut.jpg is not a valid JPEG: ", "Premature end of JPEG file"});
  expect_error_mentions([&] { decode_image(jpeg.substr(0, 2), "header.jpg", 3, 4); },
                        {"image header.jpg is not a valid JPEG: "});
  const std::string kept = MUONLAB_SOURCE_DIR "/tests/fuzz_regressions/image/";
  for (const auto& [file, reason] : std::vector<std::pair<std::string, std::string>>{
           {"jpeg-huffman-table-over-256-codes.jpg", "Bogus Huffman table definition"},
           {"jpeg-entropy-data-past-its-end.jpg", "Corrupt JPEG data"}})
    expect_error_mentions([&] { decode_image(read_file(kept + file), kept + file, 3, 4); },
                          {"image " + kept + file + " is not a valid JPEG: " + reason});
}

TEST(ImageFolder, LimitSamplesAcrossTheClassesWithTheSeed) {
  TempDir dir;
  for (int c = 0; c < 4; ++c)
    for (int i = 0; i < 5; ++i)
      write_png(dir.file("all/class" + std::to_string(c) + "/" + std::to_string(i) + ".png"), 2, 2,
                static_cast<uint8_t>(c * 50 + i), 0, 0);
  ImageFolderOptions options;
  options.train_dir = dir.file("all");
  options.image_size = 2;
  options.val_fraction = 0.0;
  options.limit_train = 8;
  options.seed = 3;
  const ImageDataset sample = load_image_folder(options).train;
  ASSERT_EQ(sample.size(), 8);
  // Not the first 8 files (five of class 0, three of class 1): at least three classes, in class order.
  EXPECT_GE(std::set<int64_t>(sample.labels.begin(), sample.labels.end()).size(), 3u);
  EXPECT_TRUE(std::is_sorted(sample.labels.begin(), sample.labels.end()));
  EXPECT_EQ(load_image_folder(options).train.pixels, sample.pixels);
  options.seed = 4;
  EXPECT_NE(load_image_folder(options).train.pixels, sample.pixels);
}

TEST(ImageFolder, BadLayoutsAreRejected) {
  TempDir dir;
  write_png(dir.file("train/a/x.png"), 2, 2, 1, 1, 1);
  write_png(dir.file("val/b/y.png"), 2, 2, 1, 1, 1);
  ImageFolderOptions options;
  options.train_dir = dir.file("train");
  options.val_dir = dir.file("val");
  expect_error_mentions([&] { load_image_folder(options); }, {dir.file("val") + "/b", "not one of the training classes"});
  options.train_dir = dir.file("missing");
  expect_error_mentions([&] { load_image_folder(options); }, {dir.file("missing")});
  options.train_dir = dir.file("train/a");
  expect_error_mentions([&] { load_image_folder(options); }, {"no class subfolders"});
}

TEST(ImageFolder, CenterCropAndBilinearResize) {
  // 2 x 4 grey image: the centered 2 x 2 square is columns 1..2, kept unchanged at size 2.
  const std::vector<uint8_t> wide = {0, 10, 20, 30, 40, 50, 60, 70};
  EXPECT_EQ(square_resize_to_chw(wide.data(), 2, 4, 1, 2), (std::vector<uint8_t>{10, 20, 50, 60}));
  // 4 x 4 -> 2 x 2 samples at source coordinates 0.5 and 2.5: averages of 2 x 2 blocks.
  std::vector<uint8_t> square(16);
  for (int i = 0; i < 16; ++i) square[i] = static_cast<uint8_t>(i * 4);
  EXPECT_EQ(square_resize_to_chw(square.data(), 4, 4, 1, 2), (std::vector<uint8_t>{10, 18, 42, 50}));
  // Interleaved RGB in, planar out.
  const std::vector<uint8_t> rgb = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
  EXPECT_EQ(square_resize_to_chw(rgb.data(), 2, 2, 3, 2), (std::vector<uint8_t>{1, 4, 7, 10, 2, 5, 8, 11, 3, 6, 9, 12}));
}

// ---------------------------------------------------------------- text_char

TEST(TextChar, VocabularyIsTheSortedDistinctBytes) {
  const CharVocab vocab = CharVocab::from_text("hello world");
  EXPECT_EQ(vocab.size(), 8);
  EXPECT_EQ(vocab.symbols().front(), ' ');
  EXPECT_EQ(vocab.encode("hold"), (std::vector<uint16_t>{3, 5, 4, 1}));
  EXPECT_EQ(vocab.decode({3, 5, 4, 1}), "hold");
  expect_error_mentions([&] { vocab.encode("hex"); }, {"byte 120", "offset 2"});
  EXPECT_THROW(vocab.decode({8}), std::out_of_range);

  const CharVocab bytes = CharVocab::all_bytes();
  EXPECT_EQ(bytes.size(), 256);
  EXPECT_EQ(bytes.encode("A"), (std::vector<uint16_t>{65}));
}

TEST(TextChar, SplitsTheTailOffForValidation) {
  TempDir dir;
  std::string text;
  for (int i = 0; i < 100; ++i) text.push_back(static_cast<char>('a' + i % 7));
  write_text(dir.file("input.txt"), text);
  const TokenCorpus corpus = load_text_char(dir.file("input.txt"));
  EXPECT_EQ(corpus.vocab_size, 7);
  ASSERT_EQ(corpus.train.size(), 90u);
  ASSERT_EQ(corpus.val.size(), 10u);
  std::vector<uint16_t> all = corpus.train;
  all.insert(all.end(), corpus.val.begin(), corpus.val.end());
  EXPECT_EQ(all, corpus.vocab->encode(text));

  TextCharOptions byte_level;
  byte_level.byte_level = true;
  byte_level.val_fraction = 0.25;
  const TokenCorpus bytes = load_text_char(dir.file("input.txt"), byte_level);
  EXPECT_EQ(bytes.vocab_size, 256);
  EXPECT_EQ(bytes.train.size(), 75u);
  EXPECT_EQ(bytes.train[0], 'a');

  write_text(dir.file("empty.txt"), "");
  expect_error_mentions([&] { load_text_char(dir.file("empty.txt")); }, {dir.file("empty.txt"), "empty"});
  // A folder opens like a file that reads as nothing: it is named as a folder, not as an empty text.
  expect_error_mentions([&] { load_text_char(dir.path()); }, {dir.path(), "is a directory, not a file"});
  expect_error_mentions([&] { read_token_file(dir.path()); }, {dir.path(), "is a directory, not a file"});
  expect_error_mentions([&] { load_text_char(dir.file("absent.txt")); }, {dir.file("absent.txt")});
}

TEST(TextChar, VocabularyFileRoundTrips) {
  TempDir dir;
  const CharVocab vocab = CharVocab::from_text("The quick\nbrown fox \xc3\xa9");
  vocab.save(dir.file("vocab.txt"));
  const CharVocab loaded = CharVocab::load(dir.file("vocab.txt"));
  EXPECT_EQ(loaded.symbols(), vocab.symbols());

  // A stored vocabulary is used as is, and a byte it lacks is an error naming the text file.
  write_text(dir.file("other.txt"), "brown fox");
  TextCharOptions options;
  options.vocab = loaded;
  EXPECT_EQ(load_text_char(dir.file("other.txt"), options).vocab_size, vocab.size());
  write_text(dir.file("new.txt"), "zebra");
  expect_error_mentions([&] { load_text_char(dir.file("new.txt"), options); },
                        {dir.file("new.txt"), "byte 122", "not in the character vocabulary " + dir.file("vocab.txt")});

  write_text(dir.file("bad_header.txt"), "vocab\n1 2\n");
  expect_error_mentions([&] { CharVocab::load(dir.file("bad_header.txt")); }, {dir.file("bad_header.txt")});
  write_text(dir.file("bad_value.txt"), "muonlab-char-vocab 1\n65\n300\n");
  expect_error_mentions([&] { CharVocab::load(dir.file("bad_value.txt")); }, {"300"});
  write_text(dir.file("duplicate.txt"), "muonlab-char-vocab 1\n65\n65\n");
  expect_error_mentions([&] { CharVocab::load(dir.file("duplicate.txt")); }, {dir.file("duplicate.txt"), "twice"});
}

TEST(TextChar, RealTinyShakespeare) {
  const std::string path = kSharedData + "/tinyshakespeare/input.txt";
  if (!fs::exists(path)) GTEST_SKIP() << "no Tiny Shakespeare at " << path;
  const TokenCorpus corpus = load_text_char(path);
  EXPECT_EQ(corpus.vocab_size, 65);
  // nanoGPT's shakespeare_char: 1,003,854 train and 111,540 val tokens.
  EXPECT_EQ(corpus.train.size(), 1003854u);
  EXPECT_EQ(corpus.val.size(), 111540u);
  EXPECT_EQ(corpus.vocab->decode({corpus.train.begin(), corpus.train.begin() + 14}), "First Citizen:");
}

// ---------------------------------------------------------------- text_tokens

std::vector<uint8_t> uint16_bytes(const std::vector<uint16_t>& tokens) {
  std::vector<uint8_t> bytes;
  for (uint16_t t : tokens) bytes.insert(bytes.end(), {static_cast<uint8_t>(t & 255), static_cast<uint8_t>(t >> 8)});
  return bytes;
}

std::vector<uint8_t> llmc_file(const std::vector<uint16_t>& tokens, int32_t version, int32_t announced) {
  std::vector<int32_t> header(256, 0);
  header[0] = 20240520;
  header[1] = version;
  header[2] = announced;
  std::vector<uint8_t> bytes(reinterpret_cast<const uint8_t*>(header.data()),
                             reinterpret_cast<const uint8_t*>(header.data()) + 1024);
  const std::vector<uint8_t> payload = uint16_bytes(tokens);
  bytes.insert(bytes.end(), payload.begin(), payload.end());
  return bytes;
}

TEST(TextTokens, ReadsRawAndHeaderedFiles) {
  TempDir dir;
  const std::vector<uint16_t> tokens = {0, 1, 50256, 300, 65535, 7};
  write_bytes(dir.file("raw.bin"), uint16_bytes(tokens));
  write_bytes(dir.file("llmc.bin"), llmc_file(tokens, 1, 6));
  EXPECT_EQ(read_token_file(dir.file("raw.bin")), tokens);
  EXPECT_EQ(read_token_file(dir.file("llmc.bin")), tokens);
}

TEST(TextTokens, CorruptFilesAreRejected) {
  TempDir dir;
  const std::vector<uint16_t> tokens = {1, 2, 3, 4};
  write_bytes(dir.file("short.bin"), llmc_file(tokens, 1, 5));
  expect_error_mentions([&] { read_token_file(dir.file("short.bin")); }, {dir.file("short.bin"), "5 tokens", "8 bytes"});
  write_bytes(dir.file("v2.bin"), llmc_file(tokens, 2, 4));
  expect_error_mentions([&] { read_token_file(dir.file("v2.bin")); }, {dir.file("v2.bin"), "version 2"});
  std::vector<uint8_t> odd = uint16_bytes(tokens);
  odd.push_back(0);
  write_bytes(dir.file("odd.bin"), odd);
  expect_error_mentions([&] { read_token_file(dir.file("odd.bin")); }, {dir.file("odd.bin"), "odd size"});
  expect_error_mentions([&] { read_token_file(dir.file("absent.bin")); }, {dir.file("absent.bin")});
}

TEST(TextTokens, SplitsAndChecksTheVocabulary) {
  TempDir dir;
  std::vector<uint16_t> tokens(20);
  std::iota(tokens.begin(), tokens.end(), uint16_t{100});
  write_bytes(dir.file("train.bin"), llmc_file(tokens, 1, 20));
  write_bytes(dir.file("val.bin"), uint16_bytes({5, 6, 7}));

  const TokenCorpus split = load_text_tokens(dir.file("train.bin"));
  EXPECT_EQ(split.train.size(), 18u);
  EXPECT_EQ(split.val, (std::vector<uint16_t>{118, 119}));
  EXPECT_EQ(split.vocab_size, 120);
  EXPECT_FALSE(split.vocab.has_value());

  TextTokensOptions options;
  options.val_path = dir.file("val.bin");
  options.vocab_size = 50257;
  const TokenCorpus separate = load_text_tokens(dir.file("train.bin"), options);
  EXPECT_EQ(separate.train, tokens);
  EXPECT_EQ(separate.val, (std::vector<uint16_t>{5, 6, 7}));
  EXPECT_EQ(separate.vocab_size, 50257);

  options.vocab_size = 110;
  expect_error_mentions([&] { load_text_tokens(dir.file("train.bin"), options); }, {dir.file("train.bin"), "token 110", "index 10"});
}

// Tokens 0, 1, 2, ... make every window's start readable from its first token.
std::shared_ptr<const TokenCorpus> counting_corpus(int64_t train_tokens, int64_t val_tokens) {
  auto corpus = std::make_shared<TokenCorpus>();
  for (int64_t i = 0; i < train_tokens; ++i) corpus->train.push_back(static_cast<uint16_t>(i));
  for (int64_t i = 0; i < val_tokens; ++i) corpus->val.push_back(static_cast<uint16_t>(i));
  corpus->vocab_size = 65536;
  return corpus;
}

TEST(TextTokens, TrainBatchesAreSeededShiftedWindows) {
  const auto corpus = counting_corpus(1000, 0);
  TokenBatcherOptions options{4, 8, 42};
  const TokenBatcher batcher(corpus, options);
  EXPECT_EQ(batcher.steps_per_epoch(), 1000 / 32);
  const HostBatch batch = batcher.train_batch(3);
  EXPECT_EQ(batch.input_shape, (std::vector<int64_t>{4, 8}));
  EXPECT_EQ(batch.target_shape, (std::vector<int64_t>{4, 8}));
  EXPECT_TRUE(batch.inputs.empty());
  std::set<int64_t> starts;
  for (int64_t b = 0; b < 4; ++b) {
    const int64_t start = batch.input_ids[b * 8];
    starts.insert(start);
    EXPECT_LE(start + 8, 999);
    for (int64_t t = 0; t < 8; ++t) {
      EXPECT_EQ(batch.input_ids[b * 8 + t], start + t);
      EXPECT_EQ(batch.targets[b * 8 + t], start + t + 1);
    }
  }
  EXPECT_GT(starts.size(), 1u);

  // A pure function of (seed, step): a new batcher rebuilds it; other steps and seeds differ.
  const TokenBatcher same(corpus, options);
  EXPECT_EQ(same.train_batch(3).input_ids, batch.input_ids);
  EXPECT_NE(batcher.train_batch(4).input_ids, batch.input_ids);
  options.seed = 43;
  EXPECT_NE(TokenBatcher(corpus, options).train_batch(3).input_ids, batch.input_ids);
}

TEST(TextTokens, WindowStartsReachBothEnds) {
  // 12 tokens, block 8: starts 0..3 are the only valid ones, and all of them occur.
  const TokenBatcher batcher(counting_corpus(12, 0), {16, 8, 7});
  std::set<int64_t> starts;
  for (int64_t step = 0; step < 8; ++step) {
    const HostBatch batch = batcher.train_batch(step);
    for (int64_t b = 0; b < 16; ++b) starts.insert(batch.input_ids[b * 8]);
  }
  EXPECT_EQ(starts, (std::set<int64_t>{0, 1, 2, 3}));
  EXPECT_THROW(TokenBatcher(counting_corpus(8, 0), {1, 8, 0}), std::invalid_argument);
}

TEST(TextTokens, ValidationBatchesTileTheValidationSet) {
  // 45 val tokens, block 4: windows start at 0, 4, ..., 40 (11 windows), batches of 3: 4 batches, last of 2.
  const TokenBatcher batcher(counting_corpus(100, 45), {3, 4, 0});
  ASSERT_EQ(batcher.num_val_batches(), 4);
  std::vector<int64_t> predicted;
  for (int64_t i = 0; i < 4; ++i) {
    const HostBatch batch = batcher.val_batch(i);
    EXPECT_EQ(batch.size(), i < 3 ? 3 : 2);
    predicted.insert(predicted.end(), batch.targets.begin(), batch.targets.end());
    EXPECT_EQ(batch.input_ids, batcher.val_batch(i).input_ids);
  }
  std::vector<int64_t> expected(44);
  std::iota(expected.begin(), expected.end(), int64_t{1});
  EXPECT_EQ(predicted, expected);
  EXPECT_THROW(batcher.val_batch(4), std::out_of_range);
  EXPECT_EQ(TokenBatcher(counting_corpus(100, 4), {3, 4, 0}).num_val_batches(), 0);
}

// ---------------------------------------------------------------- synthetic

SyntheticOptions cluster_options() {
  SyntheticOptions options;
  options.num_features = 8;
  options.num_classes = 4;
  options.num_examples = 400;
  options.num_val_examples = 200;
  options.seed = 5;
  options.center_spread = 3.0;
  return options;
}

TEST(Synthetic, IsSeededAndBalanced) {
  const FeatureSplits a = make_gaussian_clusters(cluster_options());
  const FeatureSplits b = make_gaussian_clusters(cluster_options());
  EXPECT_EQ(a.train.features, b.train.features);
  EXPECT_EQ(a.val.features, b.val.features);
  EXPECT_NE(a.train.features, a.val.features);
  EXPECT_EQ(a.train.features.size(), 400u * 8);
  std::vector<int64_t> histogram(4, 0);
  for (int64_t label : a.train.labels) histogram[label]++;
  EXPECT_EQ(histogram, std::vector<int64_t>(4, 100));
  SyntheticOptions other = cluster_options();
  other.seed = 6;
  EXPECT_NE(make_gaussian_clusters(other).train.features, a.train.features);
  other.num_classes = 0;
  EXPECT_THROW(make_gaussian_clusters(other), std::invalid_argument);
}

TEST(Synthetic, IsLearnableByNearestClassMean) {
  const FeatureSplits data = make_gaussian_clusters(cluster_options());
  const int64_t features = 8, classes = 4;
  std::vector<double> means(classes * features, 0.0);
  for (int64_t i = 0; i < data.train.size(); ++i) {
    for (int64_t f = 0; f < features; ++f) means[data.train.labels[i] * features + f] += data.train.features[i * features + f] / 100.0;
  }
  // The sample noise has unit std: the per-coordinate spread of each class around its mean.
  double noise_sum = 0;
  for (int64_t i = 0; i < data.train.size(); ++i) {
    for (int64_t f = 0; f < features; ++f) {
      const double d = data.train.features[i * features + f] - means[data.train.labels[i] * features + f];
      noise_sum += d * d;
    }
  }
  EXPECT_NEAR(std::sqrt(noise_sum / (400.0 * features)), 1.0, 0.1);
  int64_t correct = 0;
  for (int64_t i = 0; i < data.val.size(); ++i) {
    int64_t best = 0;
    double best_distance = INFINITY;
    for (int64_t k = 0; k < classes; ++k) {
      double distance = 0;
      for (int64_t f = 0; f < features; ++f) distance += std::pow(data.val.features[i * features + f] - means[k * features + f], 2);
      if (distance < best_distance) best_distance = distance, best = k;
    }
    correct += best == data.val.labels[i];
  }
  EXPECT_GE(correct, 190);  // of 200
}

TEST(Synthetic, BatcherVisitsEveryExampleOncePerEpoch) {
  const auto data = std::make_shared<const FeatureSplits>(make_gaussian_clusters(cluster_options()));
  const FeatureBatcher batcher(data, {32, 9, true});
  ASSERT_EQ(batcher.steps_per_epoch(), 12);  // 400 / 32, the last 16 examples dropped
  std::vector<float> first_features;
  for (int64_t epoch = 0; epoch < 2; ++epoch) {
    std::multiset<float> seen;
    for (int64_t k = 0; k < 12; ++k) {
      const HostBatch batch = batcher.train_batch(epoch * 12 + k);
      ASSERT_EQ(batch.input_shape, (std::vector<int64_t>{32, 8}));
      for (int64_t i = 0; i < 32; ++i) seen.insert(batch.inputs[i * 8]);
      if (k == 0 && epoch == 0) first_features = batch.inputs;
      if (k == 0 && epoch == 1) {
        EXPECT_NE(batch.inputs, first_features);  // reshuffled
      }
    }
    EXPECT_EQ(seen.size(), 384u);
    EXPECT_EQ(std::set<float>(seen.begin(), seen.end()).size(), 384u);  // no example twice
  }
  EXPECT_EQ(batcher.num_val_batches(), 7);
  EXPECT_EQ(batcher.val_batch(6).size(), 200 - 6 * 32);
  EXPECT_EQ(batcher.val_batch(0).inputs[8], data->val.features[8]);  // in order
}

// ---------------------------------------------------------------- prefetch

std::shared_ptr<const FeatureSplits> small_clusters() {
  SyntheticOptions options = cluster_options();
  options.num_examples = 50;
  return std::make_shared<const FeatureSplits>(make_gaussian_clusters(options));
}

TEST(Prefetch, YieldsTheSynchronousSequence) {
  const FeatureBatcher batcher(small_clusters(), {8, 3, true});
  for (int depth : {0, 1, 4}) {
    // Starting mid-epoch, as when resuming from a checkpoint, and crossing two epoch boundaries.
    const auto loader = train_loader(batcher, 5, 17, depth);
    for (int64_t step = 5; step < 17; ++step) {
      ASSERT_TRUE(loader->has_next());
      EXPECT_EQ(loader->position(), step);
      const HostBatch batch = loader->next();
      const HostBatch expected = batcher.train_batch(step);
      EXPECT_EQ(batch.inputs, expected.inputs) << "depth " << depth << " step " << step;
      EXPECT_EQ(batch.targets, expected.targets);
    }
    EXPECT_FALSE(loader->has_next());
    EXPECT_THROW(loader->next(), std::out_of_range);
  }
}

TEST(Prefetch, WorkerExceptionReachesTheConsumerInOrder) {
  for (int depth : {0, 2}) {
    PrefetchLoader loader(
        [](int64_t index) {
          if (index == 3) throw std::runtime_error("batch 3 is broken");
          HostBatch batch;
          batch.targets = {index};
          batch.target_shape = {1};
          return batch;
        },
        0, 10, depth);
    for (int64_t i = 0; i < 3; ++i) EXPECT_EQ(loader.next().targets[0], i);
    expect_error_mentions([&] { loader.next(); }, {"batch 3 is broken"});
  }
}

TEST(Prefetch, StaysBoundedAndStopsOnDestruction) {
  std::atomic<int64_t> built{0};
  {
    PrefetchLoader loader(
        [&](int64_t index) {
          built++;
          HostBatch batch;
          batch.targets = {index};
          return batch;
        },
        0, 1000000, 3);
    EXPECT_EQ(loader.next().targets[0], 0);
    EXPECT_EQ(loader.next().targets[0], 1);
  }
  // Two consumed, at most three queued and one in flight when the destructor stopped the worker.
  EXPECT_LE(built.load(), 6);
  EXPECT_GE(built.load(), 2);
}

// ---------------------------------------------------------------- augmentation and image batches

// One 1-channel 3 x 4 image holding 1..12 row by row, and a lookup table returning the byte itself.
const std::vector<uint8_t> kTinyImage = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};

std::vector<float> identity_lookup(int64_t channels) {
  std::vector<float> lookup;
  for (int64_t c = 0; c < channels; ++c) {
    for (int v = 0; v < 256; ++v) lookup.push_back(static_cast<float>(v));
  }
  return lookup;
}

std::vector<float> render_tiny(const ImageAugmentation& augmentation) {
  std::vector<float> out(12);
  render_image(kTinyImage.data(), 1, 3, 4, augmentation, identity_lookup(1).data(), out.data());
  return out;
}

TEST(Augment, NoAugmentationCopiesThroughTheLookup) {
  EXPECT_EQ(render_tiny({}), (std::vector<float>{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}));
}

TEST(Augment, FlipMirrorsEachRow) {
  ImageAugmentation flip;
  flip.flip = true;
  EXPECT_EQ(render_tiny(flip), (std::vector<float>{4, 3, 2, 1, 8, 7, 6, 5, 12, 11, 10, 9}));
}

TEST(Augment, CropShiftFillsWithZeros) {
  ImageAugmentation crop;  // output(y, x) = input(y + 1, x - 1)
  crop.dy = 1;
  crop.dx = -1;
  EXPECT_EQ(render_tiny(crop), (std::vector<float>{0, 5, 6, 7, 0, 9, 10, 11, 0, 0, 0, 0}));
  crop.flip = true;  // output(y, x) = input(y + 1, 3 - x - 1)
  EXPECT_EQ(render_tiny(crop), (std::vector<float>{7, 6, 5, 0, 11, 10, 9, 0, 0, 0, 0, 0}));
}

TEST(Augment, TranslateFillsByReflection) {
  ImageAugmentation translate;  // output(y, x) = input(reflect(y - 1), reflect(x + 2))
  translate.dy = -1;
  translate.dx = 2;
  translate.reflect = true;
  EXPECT_EQ(render_tiny(translate), (std::vector<float>{7, 8, 7, 6, 3, 4, 3, 2, 7, 8, 7, 6}));
}

TEST(Augment, DrawsCoverTheConfiguredRange) {
  AugmentOptions options;
  options.translate = 2;
  options.flip = true;
  std::set<int64_t> shifts;
  int flips = 0;
  for (int64_t example = 0; example < 1000; ++example) {
    const ImageAugmentation a = draw_augmentation(options, 11, 0, example);
    shifts.insert(a.dy);
    shifts.insert(a.dx);
    flips += a.flip;
    EXPECT_TRUE(a.reflect);
    const ImageAugmentation again = draw_augmentation(options, 11, 0, example);
    EXPECT_EQ(std::tie(a.dy, a.dx, a.flip), std::tie(again.dy, again.dx, again.flip));
  }
  EXPECT_EQ(shifts, (std::set<int64_t>{-2, -1, 0, 1, 2}));
  EXPECT_GT(flips, 420);
  EXPECT_LT(flips, 580);
  EXPECT_FALSE(draw_augmentation({4, 0, false}, 11, 0, 0).reflect);
  const ImageAugmentation none = draw_augmentation({}, 11, 0, 0);
  EXPECT_EQ(std::tie(none.dy, none.dx, none.flip), std::make_tuple(int64_t{0}, int64_t{0}, false));
}

TEST(Augment, AlternatingFlipInvertsEachImagesFirstDrawEveryOtherEpoch) {
  AugmentOptions options;
  options.translate = 2;
  options.flip = true;
  options.alternating_flip = true;
  int flips = 0;
  for (int64_t example = 0; example < 1000; ++example) {
    const bool first = draw_augmentation(options, 11, 0, example).flip;
    flips += first;
    for (int64_t epoch = 1; epoch < 5; ++epoch)
      EXPECT_EQ(draw_augmentation(options, 11, epoch, example).flip, first != (epoch % 2 == 1)) << example;
  }
  EXPECT_GT(flips, 420);
  EXPECT_LT(flips, 580);
  // The shifts are the random flip's draws: only the flip changes.
  AugmentOptions random_flip = options;
  random_flip.alternating_flip = false;
  for (int64_t example = 0; example < 20; ++example) {
    const ImageAugmentation a = draw_augmentation(options, 11, 3, example), b = draw_augmentation(random_flip, 11, 3, example);
    EXPECT_EQ(std::tie(a.dy, a.dx), std::tie(b.dy, b.dx));
  }
}

// `count` 2-channel 5 x 5 images; the label of example i is i, so a batch tells which examples it holds.
std::shared_ptr<const ImageDataset> numbered_images(int64_t count) {
  auto data = std::make_shared<ImageDataset>();
  data->channels = 2;
  data->height = 5;
  data->width = 5;
  data->num_classes = count;
  CounterRng rng(99);
  for (int64_t i = 0; i < count * 50; ++i) data->pixels.push_back(static_cast<uint8_t>(rng.below(256)));
  for (int64_t i = 0; i < count; ++i) data->labels.push_back(i);
  return data;
}

TEST(Augment, BatchesAreNormalizedAugmentedImages) {
  const auto train = numbered_images(20);
  ImageBatcherOptions options;
  options.batch_size = 6;
  options.seed = 3;
  options.augment.crop_padding = 2;
  options.augment.flip = true;
  const ImageBatcher batcher(train, nullptr, options);
  ASSERT_EQ(batcher.steps_per_epoch(), 3);

  // Statistics of the training pixels.
  for (int64_t c = 0; c < 2; ++c) {
    double sum = 0, sum_squares = 0;
    for (int64_t i = 0; i < 20; ++i) {
      for (int64_t p = 0; p < 25; ++p) {
        const double v = train->image(i)[c * 25 + p] / 255.0;
        sum += v;
        sum_squares += v * v;
      }
    }
    const double mean = sum / 500, stddev = std::sqrt(sum_squares / 500 - mean * mean);
    EXPECT_NEAR(batcher.channel_mean()[c], mean, 1e-5);
    EXPECT_NEAR(batcher.channel_std()[c], stddev, 1e-5);
  }
  std::vector<float> lookup;
  for (int64_t c = 0; c < 2; ++c) {
    for (int v = 0; v < 256; ++v) lookup.push_back((v / 255.0f - batcher.channel_mean()[c]) / batcher.channel_std()[c]);
  }

  std::set<int64_t> epoch_examples;
  for (int64_t k = 0; k < 3; ++k) {
    const HostBatch batch = batcher.epoch_batch(1, k);
    ASSERT_EQ(batch.input_shape, (std::vector<int64_t>{6, 2, 5, 5}));
    for (int64_t i = 0; i < 6; ++i) {
      const int64_t example = batch.targets[i];
      EXPECT_TRUE(epoch_examples.insert(example).second);
      std::vector<float> expected(50);
      render_image(train->image(example), 2, 5, 5, draw_augmentation(options.augment, 3, 1, example), lookup.data(),
                   expected.data());
      for (int64_t j = 0; j < 50; ++j) ASSERT_NEAR(batch.inputs[i * 50 + j], expected[j], 1e-5) << "example " << example;
    }
  }
  EXPECT_EQ(epoch_examples.size(), 18u);  // 20 examples, 2 dropped
}

TEST(Augment, TrainBatchesArePureFunctionsOfSeedAndStep) {
  const auto train = numbered_images(20);
  ImageBatcherOptions options;
  options.batch_size = 6;
  options.seed = 3;
  options.augment.translate = 1;
  options.augment.flip = true;
  const ImageBatcher batcher(train, nullptr, options);
  const ImageBatcher rebuilt(train, nullptr, options);
  for (int64_t step : {7, 0, 4}) {  // out of order, across epochs
    EXPECT_EQ(batcher.train_batch(step).inputs, rebuilt.train_batch(step).inputs);
  }
  EXPECT_EQ(batcher.train_batch(4).inputs, batcher.epoch_batch(1, 1).inputs);
  EXPECT_NE(batcher.train_batch(0).targets, batcher.train_batch(3).targets);  // epochs reshuffle
  options.seed = 4;
  EXPECT_NE(ImageBatcher(train, nullptr, options).train_batch(0).inputs, batcher.train_batch(0).inputs);
  EXPECT_THROW(batcher.epoch_batch(0, 3), std::out_of_range);
}

TEST(Augment, ValidationBatchesAreInOrderAndUnaugmented) {
  const auto train = numbered_images(20);
  const auto val = numbered_images(7);
  ImageBatcherOptions options;
  options.batch_size = 6;
  options.val_batch_size = 3;
  options.augment.translate = 2;
  options.augment.flip = true;
  const ImageBatcher batcher(train, val, options);
  ASSERT_EQ(batcher.num_val_batches(), 3);
  const HostBatch last = batcher.val_batch(2);
  EXPECT_EQ(last.input_shape, (std::vector<int64_t>{1, 2, 5, 5}));
  EXPECT_EQ(last.targets, (std::vector<int64_t>{6}));
  for (int64_t j = 0; j < 50; ++j) {
    const int64_t c = j / 25;
    const float expected = (val->image(6)[j] / 255.0f - batcher.channel_mean()[c]) / batcher.channel_std()[c];
    EXPECT_NEAR(last.inputs[j], expected, 1e-5);
  }
  EXPECT_EQ(batcher.val_batch(1).targets, (std::vector<int64_t>{3, 4, 5}));
  EXPECT_EQ(ImageBatcher(train, nullptr, options).num_val_batches(), 0);
}

TEST(Augment, InvalidOptionsAreRejected) {
  const auto train = numbered_images(20);
  ImageBatcherOptions options;
  options.batch_size = 6;
  options.augment.crop_padding = 2;
  options.augment.translate = 2;
  expect_error_mentions([&] { ImageBatcher(train, nullptr, options); }, {"crop_padding", "translate"});
  options.augment.crop_padding = 0;
  options.augment.translate = 5;  // reflection needs a shift below the 5-pixel side
  expect_error_mentions([&] { ImageBatcher(train, nullptr, options); }, {"translate 5"});
  options.augment.translate = 0;
  options.batch_size = 21;
  expect_error_mentions([&] { ImageBatcher(train, nullptr, options); }, {"batch_size 21", "20 training examples"});
  options.drop_last = false;
  EXPECT_EQ(ImageBatcher(train, nullptr, options).steps_per_epoch(), 1);
}

}  // namespace
}  // namespace ml
