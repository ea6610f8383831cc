// The fuzz harness (CTest label "fuzz"; `make sanitize` runs it under ASan + UBSan): every parser
// of outside input is fed seeded mutations of valid inputs and must either accept the input or
// throw a std::exception with a message: never crash, hang, trip a sanitizer or throw anything else.
//
// Bounded for CI: each parser runs at most kIterations mutated inputs and at most
// MUONLAB_FUZZ_SECONDS seconds (default 5), whichever ends first; the mutations are seeded, so a
// run is reproducible up to where the clock stops it. For a longer campaign raise both, e.g.
//   MUONLAB_FUZZ_SECONDS=600 MUONLAB_FUZZ_ITERATIONS=10000000 build-asan/bin/muonlab_tests --gtest_filter='FuzzParsers.*'
// (MUONLAB_FUZZ_SEED picks other mutations). Seeds are generated here, plus the files in
// tests/fuzz_seeds/<parser>/. Before each input is parsed it is written to
// <build>/fuzz-current/<parser>.bin: after a crash that file is the input that caused it. Copy it
// into tests/fuzz_regressions/<parser>/ (FuzzRegressions replays every file there), then fix the parser.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>
#include <zlib.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <stb_image_write.h>  // the implementation is compiled in test_datasets.cpp

#include "datasets/image_dataset.h"
#include "datasets/rng.h"
#include "datasets/text_dataset.h"
#include "experiments/checkpoint.h"
#include "experiments/config.h"
#include "experiments/sweep.h"
#include "framework/io/atomic_file.h"
#include "framework/io/json.h"
#include "framework/io/npy.h"
#include "framework/io/safetensors.h"
#include "framework/tensor.h"
#include "tests/temp_dir.h"

namespace ml {
namespace {

namespace fs = std::filesystem;

constexpr int64_t kIterations = 10000;
const std::string kRegressions = MUONLAB_SOURCE_DIR "/tests/fuzz_regressions";
const std::string kSeeds = MUONLAB_SOURCE_DIR "/tests/fuzz_seeds";

int64_t env_or(const char* name, int64_t fallback) {
  const char* value = std::getenv(name);
  return value ? std::atoll(value) : fallback;
}

// One parser: its seed inputs, words worth splicing into them, and how to run it on bytes (in a
// scratch folder of its own, for parsers that read files).
struct FuzzTarget {
  std::string name;
  std::vector<std::string> seeds;
  std::vector<std::string> dictionary;
  std::function<void(const std::string& bytes, const std::string& scratch)> parse;
};

// ------------------------------------------------------------------ mutations

class Mutator {
 public:
  Mutator(uint64_t seed, const FuzzTarget& target) : rng_(mix64(seed)), target_(target) {}

  std::string next() {
    std::string bytes = target_.seeds[below(target_.seeds.size())];
    const size_t count = 1 + below(4);
    for (size_t i = 0; i < count; ++i) mutate(bytes);
    return bytes;
  }

 private:
  size_t below(size_t n) { return n == 0 ? 0 : static_cast<size_t>(rng_.below(n)); }

  void mutate(std::string& bytes) {
    const size_t position = below(bytes.size() + 1);
    switch (below(9)) {
      case 0:  // flip a bit
        if (!bytes.empty()) bytes[position % bytes.size()] ^= static_cast<char>(1 << below(8));
        break;
      case 1:  // replace a byte
        if (!bytes.empty()) bytes[position % bytes.size()] = static_cast<char>(below(256));
        break;
      case 2:  // insert random bytes
        bytes.insert(position, random_bytes(1 + below(8)));
        break;
      case 3:  // delete a range
        bytes.erase(position, 1 + below(16));
        break;
      case 4: {  // copy a range elsewhere
        if (bytes.empty()) break;
        const size_t from = below(bytes.size());
        const std::string chunk = bytes.substr(from, 1 + below(32));
        bytes.insert(below(bytes.size() + 1), chunk);
        break;
      }
      case 5:  // splice in a word of the format
        if (!target_.dictionary.empty()) bytes.insert(position, target_.dictionary[below(target_.dictionary.size())]);
        break;
      case 6: {  // overwrite with an extreme integer, either byte order
        static const uint32_t kExtremes[] = {0, 1, 0x7f, 0x80, 0xff, 0x7fff, 0xffff, 0x7fffffff, 0x80000000, 0xffffffff};
        uint32_t value = kExtremes[below(std::size(kExtremes))];
        std::string word(4, '\0');
        for (size_t k = 0; k < 4; ++k) word[k] = static_cast<char>(below(2) ? value >> (8 * k) : value >> (24 - 8 * k));
        bytes.replace(position, 4, word);
        break;
      }
      case 7:  // cut the end off
        bytes.resize(position);
        break;
      default: {  // splice with another seed
        const std::string& other = target_.seeds[below(target_.seeds.size())];
        bytes = bytes.substr(0, position) + other.substr(below(other.size() + 1));
        break;
      }
    }
  }

  std::string random_bytes(size_t count) {
    std::string bytes(count, '\0');
    for (char& byte : bytes) byte = static_cast<char>(below(256));
    return bytes;
  }

  CounterRng rng_;
  const FuzzTarget& target_;
};

// ------------------------------------------------------------------ running a parser

// Replaces the contents of `path` by `bytes` in place. Not by truncating it first: ext4 flushes a
// file truncated to zero and rewritten when it is closed (auto_da_alloc), which costs milliseconds
// per input, most of a parser's time budget.
void overwrite(const std::string& path, const std::string& bytes) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
  ASSERT_GE(fd, 0) << path;
  const bool written = ::pwrite(fd, bytes.data(), bytes.size(), 0) == static_cast<ssize_t>(bytes.size()) &&
                       ::ftruncate(fd, static_cast<off_t>(bytes.size())) == 0;
  ::close(fd);
  ASSERT_TRUE(written) << path;
}

std::string write_scratch(const std::string& scratch, const std::string& name, const std::string& bytes) {
  const std::string path = scratch + "/" + name;
  overwrite(path, bytes);
  return path;
}

// Runs the parser on `bytes`; a failure names `what` (the input's origin) and keeps the input.
void expect_clean(const FuzzTarget& target, const std::string& bytes, const std::string& scratch,
                  const std::string& what) {
  try {
    target.parse(bytes, scratch);
  } catch (const std::exception& error) {
    EXPECT_NE(std::string(error.what()), "") << target.name << ": an error without a message for " << what;
  } catch (...) {
    ADD_FAILURE() << target.name << ": threw something other than a std::exception for " << what;
  }
}

// The target's generated seeds and the files in tests/fuzz_seeds/<target>/ (inputs that cannot be
// generated in the test, like JPEGs).
FuzzTarget with_kept_seeds(FuzzTarget target) {
  const std::string folder = kSeeds + "/" + target.name;
  if (fs::is_directory(folder))
    for (const auto& entry : fs::directory_iterator(folder)) target.seeds.push_back(read_file(entry.path().string()));
  return target;
}

void fuzz(FuzzTarget given) {
  const FuzzTarget target = with_kept_seeds(std::move(given));
  ASSERT_FALSE(target.seeds.empty());
  TempDir scratch;
  const std::string current_dir = MUONLAB_BINARY_DIR "/fuzz-current";
  fs::create_directories(current_dir);
  const std::string current = current_dir + "/" + target.name + ".bin";
  // The seeds themselves parse cleanly (they are valid inputs; most are accepted).
  for (const std::string& seed : target.seeds) expect_clean(target, seed, scratch.path(), "a seed");

  const auto budget = std::chrono::seconds(env_or("MUONLAB_FUZZ_SECONDS", 5));
  const int64_t iterations = env_or("MUONLAB_FUZZ_ITERATIONS", kIterations);
  const auto start = std::chrono::steady_clock::now();
  Mutator mutator(static_cast<uint64_t>(env_or("MUONLAB_FUZZ_SEED", 20261202)), target);
  int64_t done = 0;
  for (; done < iterations && std::chrono::steady_clock::now() - start < budget; ++done) {
    const std::string bytes = mutator.next();
    overwrite(current, bytes);
    expect_clean(target, bytes, scratch.path(), "input " + std::to_string(done) + " (kept in " + current + ")");
    if (::testing::Test::HasFailure()) {
      fs::copy_file(current, current + ".failed", fs::copy_options::overwrite_existing);
      return;
    }
  }
  fs::remove(current);
  std::cout << "[ fuzz     ] " << target.name << ": " << done << " mutated inputs" << std::endl;
}

// ------------------------------------------------------------------ the parsers and their seeds

std::string file_bytes(const std::string& path) { return read_file(path); }

// For a parser run twice on one input: a clean error of the first run must not skip the second.
void try_parse(const std::function<void()>& parse) {
  try {
    parse();
  } catch (const std::exception&) {
  }
}

std::vector<std::string> shipped_configs() {
  std::vector<std::string> texts;
  for (const char* folder : {"/configs", "/configs/study"})
    for (const auto& entry : fs::directory_iterator(std::string(MUONLAB_SOURCE_DIR) + folder))
      if (entry.path().extension() == ".yaml") texts.push_back(file_bytes(entry.path().string()));
  return texts;
}

const std::vector<std::string> kYamlWords{": ",   "\n",     "\n  ",  "- ",   "[",     "]",        "{",    "}",
                                          ",",    "&a ",    "*a",    "!!",   "!",     "\"",       "'",    "#",
                                          "~",    "null",   "true",  "1e400", "-1",   "0x10",     "<<: ", "? ",
                                          "kind", "optimizer", "data", "model", "train", "grid",  "runs", "base",
                                          "99999999999999999999", "nan", ".inf", "|\n", ">\n", "\t", "%YAML 1.2\n---\n"};

FuzzTarget config_target() {
  return {"config", shipped_configs(), kYamlWords,
          [](const std::string& bytes, const std::string&) { parse_config(bytes, "fuzz.yaml"); }};
}

FuzzTarget sweep_target() {
  const std::string base = MUONLAB_SOURCE_DIR "/configs/tiny_mlp_smoke.yaml";
  std::vector<std::string> seeds{
      "name: fuzz\nout: runs\nset: {threads: 1, train: {steps: 3}}\ngrid: {seed: [1, 2]}\nruns:\n  - base: " + base +
          "\n    grid: {optimizer.lr: [0.01, 0.02]}\n  - base: " + base + "\n    label: other\n    set: {seed: 3}\n",
      "name: fuzz2\nbase: " + base + "\nruns:\n  - label: a\n  - label: b\n    set: {model: {hidden: [8]}}\n"};
  return {"sweep", seeds, kYamlWords,
          [](const std::string& bytes, const std::string&) { parse_sweep(bytes, "fuzz_sweep.yaml"); }};
}

std::string serialized(const std::function<void(const std::string&)>& save) {
  TempDir dir;
  save(dir.file("seed"));
  return file_bytes(dir.file("seed"));
}

const std::vector<std::string> kBinaryWords{std::string(8, '\xff'), std::string(8, '\0'), "\x7f\xff\xff\xff", "{", "}",
                                            "\"", ",", ":", "[", "]", "-1", "1e308", "99999999999999999999"};

FuzzTarget npy_target() {
  const auto seed = [](const Tensor& tensor) {
    return serialized([&](const std::string& path) { save_npy(path, tensor); });
  };
  std::vector<std::string> seeds{seed(Tensor::from_vector<float>({1, 2, 3, 4, 5, 6}, {2, 3})),
                                 seed(Tensor::from_vector<double>({1.5, -2.5}, {2})),
                                 seed(Tensor::from_vector<int64_t>({7}, {1, 1, 1}))};
  std::vector<std::string> words = kBinaryWords;
  for (const char* word : {"'descr'", "'<f4'", "'<f8'", "'<i8'", "'>f4'", "'fortran_order'", "True", "False",
                           "'shape'", "(", ")", "()", "(0,)", "(4294967296, 4294967296)", "L"})
    words.push_back(word);
  return {"npy", seeds, words, [](const std::string& bytes, const std::string& scratch) {
            load_npy(write_scratch(scratch, "input.npy", bytes));
          }};
}

FuzzTarget safetensors_target() {
  const std::string seed = serialized([](const std::string& path) {
    save_safetensors(path,
                     {{"weight", Tensor::from_vector<float>({1, 2, 3, 4, 5, 6}, {2, 3})},
                      {"step", Tensor::from_vector<int64_t>({42}, {1})}},
                     {{"format", "pt"}});
  });
  std::vector<std::string> words = kBinaryWords;
  for (const char* word : {"\"dtype\"", "\"F32\"", "\"F64\"", "\"I64\"", "\"BF16\"", "\"shape\"", "\"data_offsets\"",
                           "\"__metadata__\"", "[0,0]", "[18446744073709551615]"})
    words.push_back(word);
  return {"safetensors", {seed}, words, [](const std::string& bytes, const std::string& scratch) {
            load_safetensors(write_scratch(scratch, "input.safetensors", bytes));
          }};
}

FuzzTarget json_target() {
  return {"json",
          {R"({"step":10,"train_loss":1.25,"lr":0.001,"val_loss":null,"tags":["a","b"],"ok":true})",
           R"({"format":"muonlab-checkpoint","version":2,"checkpoints":[{"step":3,"dir":"checkpoints/step-000003","crc32":{"model.safetensors":"0badf00d"}}]})",
           R"([1,-2.5e-3,"\u00e9\n",{},[],false])"},
          {"\\u", "\\ud800", "[", "]", "{", "}", "\"", ":", ",", "1e999", "-0", "9007199254740993", "null", "true"},
          [](const std::string& bytes, const std::string&) { parse_json(bytes); }};
}

FuzzTarget manifest_target() {
  return {"checkpoint_manifest",
          {R"({"format":"muonlab-checkpoint","version":2,"checkpoints":[{"step":6,"dir":"checkpoints/step-000006","crc32":{"model.safetensors":"89abcdef","trainer.json":"00000001"}},{"step":3,"dir":"checkpoints/step-000003","crc32":{"model.safetensors":"12345678"}}]})",
           R"({"format":"muonlab-checkpoint","version":1,"step":10,"dir":"checkpoints/step-000010","files":["model.safetensors","optimizer.safetensors","trainer.json"]})"},
          {"\"..\"", "\"/\"", "\"/dev/zero\"", "\"../../..\"", "\"checkpoints/\"", "-1", "1e30", "\"zzzzzzzz\"", "[",
           "]", "{", "}", ","},
          [](const std::string& bytes, const std::string& scratch) {
            write_scratch(scratch, "checkpoint.json", bytes);
            std::vector<std::string> rejected;
            newest_valid_checkpoint(scratch, rejected);
          }};
}

std::string cifar_seed(int64_t records) {
  std::string bytes;
  for (int64_t r = 0; r < records; ++r) {
    bytes.push_back(static_cast<char>(r % 10));
    for (int64_t j = 0; j < 3072; ++j) bytes.push_back(static_cast<char>((r * 7 + j * 3) & 255));
  }
  return bytes;
}

FuzzTarget cifar_target() {
  return {"cifar10", {cifar_seed(1), cifar_seed(2)}, kBinaryWords, [](const std::string& bytes, const std::string& scratch) {
            read_cifar10_files({write_scratch(scratch, "data_batch_1.bin", bytes)});
          }};
}

std::string big_endian(uint32_t value) {
  return {static_cast<char>(value >> 24), static_cast<char>(value >> 16), static_cast<char>(value >> 8),
          static_cast<char>(value)};
}

std::string gzip(const std::string& bytes) {
  TempDir dir;
  gzFile file = gzopen(dir.file("x.gz").c_str(), "wb");
  gzwrite(file, bytes.data(), static_cast<unsigned>(bytes.size()));
  gzclose(file);
  return file_bytes(dir.file("x.gz"));
}

FuzzTarget idx_target() {
  // Four 3 x 3 images; the labels file beside them stays valid.
  const std::string images = big_endian(0x803) + big_endian(4) + big_endian(3) + big_endian(3) + std::string(36, '\x40');
  return {"idx", {images, gzip(images)}, kBinaryWords, [](const std::string& bytes, const std::string& scratch) {
            const std::string labels =
                write_scratch(scratch, "labels", big_endian(0x801) + big_endian(4) + std::string("\x00\x01\x02\x03", 4));
            read_idx(write_scratch(scratch, "images", bytes), labels, 10);
          }};
}

// `bytes` with the CRC of every PNG chunk whose length fits in the file recomputed.
std::string with_png_crcs_fixed(std::string bytes) {
  const auto u32 = [&](size_t at) {
    uint32_t value = 0;
    for (size_t k = 0; k < 4; ++k) value = (value << 8) | static_cast<unsigned char>(bytes[at + k]);
    return value;
  };
  for (size_t at = 8; at + 12 <= bytes.size();) {
    const uint32_t length = u32(at);
    if (length > bytes.size() - at - 12) break;
    const uint32_t crc = static_cast<uint32_t>(
        crc32(crc32(0L, Z_NULL, 0), reinterpret_cast<const Bytef*>(bytes.data() + at + 4), length + 4));
    for (size_t k = 0; k < 4; ++k) bytes[at + 8 + length + k] = static_cast<char>(crc >> (24 - 8 * k));
    at += 12 + length;
  }
  return bytes;
}

void append_bytes(void* context, void* data, int size) {
  static_cast<std::string*>(context)->append(static_cast<const char*>(data), static_cast<size_t>(size));
}

FuzzTarget image_target() {
  std::vector<uint8_t> pixels(6 * 5 * 3);
  for (size_t i = 0; i < pixels.size(); ++i) pixels[i] = static_cast<uint8_t>(i * 37);
  // The JPEG seeds are files in tests/fuzz_seeds/image/: stb's JPEG writer shifts negative values,
  // which UBSan stops.
  std::string png_rgb, png_grey;
  stbi_write_png_to_func(append_bytes, &png_rgb, 6, 5, 3, pixels.data(), 6 * 3);
  stbi_write_png_to_func(append_bytes, &png_grey, 6, 5, 1, pixels.data(), 6);
  std::vector<std::string> words = kBinaryWords;
  for (const char* word : {"IHDR", "IDAT", "IEND", "PLTE", "tRNS", "\xff\xd8", "\xff\xc0", "\xff\xda", "\xff\xd9"})
    words.push_back(word);
  return {"image", {png_rgb, png_grey}, words, [](const std::string& bytes, const std::string&) {
            // As a .png (checked chunk by chunk first), with its chunks' CRCs made right (so that the
            // decoder itself sees damaged PNGs) and, whatever those say, as a .jpg.
            try_parse([&] { decode_image(bytes, "fuzz.png", 3, 8); });
            try_parse([&] { decode_image(with_png_crcs_fixed(bytes), "fuzz.png", 3, 8); });
            decode_image(bytes, "fuzz.jpg", 1, 4);
          }};
}

FuzzTarget text_target() {
  return {"text",
          {"the cat sat on the mat.\nthe dog ran.\n", std::string("a\0b\xff\n", 5)},
          {"\n", std::string(1, '\0'), "\xff", "\xc3\xa9"},
          [](const std::string& bytes, const std::string& scratch) {
            const std::string path = write_scratch(scratch, "input.txt", bytes);
            try_parse([&] { load_text_char(path); });
            TextCharOptions byte_level;
            byte_level.byte_level = true;
            load_text_char(path, byte_level);
          }};
}

FuzzTarget vocab_target() {
  return {"char_vocab",
          {"muonlab-char-vocab 1\n10\n32\n97\n98\n", "muonlab-char-vocab 1\n0\n255\n"},
          {"\n", "-1", "256", "99999999999999999999", " ", "muonlab-char-vocab 1\n", "x"},
          [](const std::string& bytes, const std::string& scratch) {
            const CharVocab vocab = CharVocab::load(write_scratch(scratch, "vocab.txt", bytes));
            vocab.encode("ab \n");
          }};
}

FuzzTarget tokens_target() {
  std::string header(256 * 4, '\0');
  const uint32_t words[] = {20240520, 1, 3};
  for (size_t i = 0; i < 3; ++i)
    for (size_t k = 0; k < 4; ++k) header[4 * i + k] = static_cast<char>(words[i] >> (8 * k));
  const std::string tokens("\x01\x00\x02\x00\xff\xff", 6);
  return {"token_file", {header + tokens, tokens}, kBinaryWords, [](const std::string& bytes, const std::string& scratch) {
            load_text_tokens(write_scratch(scratch, "tokens.bin", bytes));
          }};
}

std::vector<FuzzTarget> all_targets() {
  return {config_target(), sweep_target(),   npy_target(),   safetensors_target(), json_target(),
          manifest_target(), cifar_target(), idx_target(),   image_target(),       text_target(),
          vocab_target(),  tokens_target()};
}

FuzzTarget target_named(const std::string& name) {
  for (FuzzTarget& target : all_targets())
    if (target.name == name) return target;
  throw std::invalid_argument("no fuzz target " + name);
}

// One test per parser, so that ctest runs them side by side.
TEST(FuzzParsers, YamlConfig) { fuzz(config_target()); }
TEST(FuzzParsers, SweepFile) { fuzz(sweep_target()); }
TEST(FuzzParsers, Npy) { fuzz(npy_target()); }
TEST(FuzzParsers, Safetensors) { fuzz(safetensors_target()); }
TEST(FuzzParsers, Json) { fuzz(json_target()); }
TEST(FuzzParsers, CheckpointManifest) { fuzz(manifest_target()); }
TEST(FuzzParsers, Cifar10Binary) { fuzz(cifar_target()); }
TEST(FuzzParsers, IdxImages) { fuzz(idx_target()); }
TEST(FuzzParsers, PngAndJpegImages) { fuzz(image_target()); }
TEST(FuzzParsers, CharacterText) { fuzz(text_target()); }
TEST(FuzzParsers, CharacterVocabulary) { fuzz(vocab_target()); }
TEST(FuzzParsers, TokenFile) { fuzz(tokens_target()); }

// Every input the fuzzing ever found a crash, hang or stray exception with, kept as
// tests/fuzz_regressions/<parser>/<file>: each now fails cleanly (or parses).
TEST(FuzzRegressions, EveryKeptInputFailsCleanly) {
  if (!fs::is_directory(kRegressions)) GTEST_SKIP() << "no " << kRegressions;
  TempDir scratch;
  int replayed = 0;
  for (const auto& folder : fs::directory_iterator(kRegressions)) {
    if (!folder.is_directory()) continue;
    const FuzzTarget target = target_named(folder.path().filename().string());
    for (const auto& input : fs::directory_iterator(folder.path())) {
      expect_clean(target, file_bytes(input.path().string()), scratch.path(), input.path().string());
      ++replayed;
    }
  }
  std::cout << "[ fuzz     ] replayed " << replayed << " kept inputs" << std::endl;
}

}  // namespace
}  // namespace ml
