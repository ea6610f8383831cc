#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <iterator>
#include <limits>
#include <stdexcept>

#include "framework/io/atomic_file.h"
#include "framework/io/json.h"
#include "framework/io/npy.h"
#include "framework/io/safetensors.h"
#include "tests/temp_dir.h"

namespace ml {
namespace {

namespace fs = std::filesystem;

template <typename F>
std::string error_of(F&& action) {
  try {
    action();
  } catch (const std::exception& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected an exception";
  return "";
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

template <typename T>
std::string bytes_of(std::initializer_list<T> values) {
  std::string bytes;
  for (T value : values) bytes.append(reinterpret_cast<const char*>(&value), sizeof value);
  return bytes;
}

// ---------------------------------------------------------------------------------------- JSON

TEST(JsonParse, ValuesKeepTypesAndKeyOrder) {
  Json doc = parse_json(R"( {"z": [1, 2.5, -3e2, true, false, null], "a": {"s": "x"}, "m": -0} )");
  ASSERT_TRUE(doc.is_object());
  ASSERT_EQ(doc.size(), 3u);
  EXPECT_EQ(doc.begin().key(), "z");
  EXPECT_EQ(std::next(doc.begin()).key(), "a");
  const Json& z = doc.at("z");
  EXPECT_EQ(z.at(0).get<int64_t>(), 1);
  EXPECT_EQ(z.at(1).get<double>(), 2.5);
  EXPECT_EQ(z.at(2).get<double>(), -300.0);
  EXPECT_TRUE(z.at(3).get<bool>());
  EXPECT_FALSE(z.at(4).get<bool>());
  EXPECT_TRUE(z.at(5).is_null());
  EXPECT_EQ(doc.at("a").at("s").get<std::string>(), "x");
  EXPECT_TRUE(std::signbit(doc.at("m").get<double>()));
  EXPECT_EQ(parse_json("9007199254740992").get<int64_t>(), int64_t{1} << 53);
}

TEST(JsonParse, StringEscapesAndUtf8) {
  Json s = parse_json(R"("q\"b\\s\/\b\f\n\r\t\u00e9\ud83d\ude00")");
  EXPECT_EQ(s.get<std::string>(), "q\"b\\s/\b\f\n\r\t\xC3\xA9\xF0\x9F\x98\x80");
  EXPECT_EQ(parse_json("\"h\xC3\xA9llo \xE2\x82\xAC\"").get<std::string>(), "h\xC3\xA9llo \xE2\x82\xAC");
}

TEST(JsonParse, ErrorsNameLineAndColumn) {
  std::string message = error_of([] { parse_json("{\n  \"a\": 1,\n  \"b\": }"); });
  EXPECT_TRUE(contains(message, "line 3, column 8")) << message;
  message = error_of([] { parse_json("[1, 2,\n 3] x"); });
  EXPECT_TRUE(contains(message, "line 2, column 5")) << message;
  message = error_of([] { parse_json(R"({"k": 1, "k": 2})"); });
  EXPECT_TRUE(contains(message, "duplicate key \"k\"")) << message;
  EXPECT_TRUE(contains(message, "column 12")) << message;  // the second key's closing quote
}

TEST(JsonParse, RejectsNonStrictInput) {
  const char* bad[] = {"",
                       "  ",
                       "[1,]",
                       "{\"a\":1,}",
                       "01",
                       "1.",
                       ".5",
                       "+1",
                       "-",
                       "1e",
                       "NaN",
                       "Infinity",
                       "'a'",
                       "\"a",
                       "\"\t\"",
                       "\"\\x\"",
                       "\"\\u12\"",
                       "\"\\ud800\"",
                       "\"\\udc00\"",
                       "[1] 2",
                       "tru",
                       "nul",
                       "{1: 2}",
                       "{\"a\" 1}",
                       "\"\xFF\"",
                       "\"\xC0\xAF\"",
                       "\"\xED\xA0\x80\"",
                       "1e400",
                       "/*c*/ 1",
                       "[1 2]"};
  for (const char* text : bad) EXPECT_THROW(parse_json(text), std::runtime_error) << "accepted: " << text;
  EXPECT_THROW(parse_json(std::string(1000, '[') + std::string(1000, ']')), std::runtime_error);
  EXPECT_NO_THROW(parse_json(std::string(100, '[') + std::string(100, ']')));
}

TEST(JsonDump, CompactWithEscapes) {
  Json doc = Json::object({{"name", "a\"b\\c\n\x01\xC3\xA9"}, {"n", Json::array({1, -0.5, 1e300, 1e15, int64_t{-7}})}});
  doc["ok"] = true;
  doc["none"] = nullptr;
  EXPECT_EQ(dump_json(doc),
            "{\"name\":\"a\\\"b\\\\c\\n\\u0001\xC3\xA9\",\"n\":[1,-0.5,1e+300,1000000000000000,-7],"
            "\"ok\":true,\"none\":null}");
  EXPECT_EQ(parse_json(dump_json(doc)), doc);
  EXPECT_EQ(dump_json(Json()), "null");
  EXPECT_EQ(dump_json(Json::object()), "{}");
  EXPECT_EQ(dump_json(Json::array()), "[]");
}

// As every earlier metrics.jsonl has them (nlohmann's own dump writes 975.0 and 0.0003).
TEST(JsonDump, DoublesHoldingIntegersHaveNoFractionAndOthersTheShortestForm) {
  EXPECT_EQ(dump_json(Json::array({975.0, -2.0, 0.0003, 2.0 / 3, 1e17, 1.5e-7})),
            "[975,-2,3e-04,0.6666666666666666,1e+17,1.5e-07]");
}

TEST(JsonDump, DoublesRoundTripExactly) {
  const double values[] = {0.1,
                           1.0 / 3,
                           -2.5e17,
                           1e-300,
                           5e-324,
                           123456789.123456789,
                           M_PI,
                           1e21,
                           -0.0,
                           9007199254740993.0,
                           std::numeric_limits<double>::max(),
                           std::numeric_limits<double>::min(),
                           std::numeric_limits<double>::lowest()};
  for (double value : values) {
    std::string text = dump_json(Json(value));
    double back = parse_json(text).get<double>();
    EXPECT_EQ(std::memcmp(&back, &value, sizeof value), 0) << text;
  }
  EXPECT_EQ(dump_json(Json(0.1)), "0.1");
}

TEST(JsonDump, RejectsNonFiniteAndInvalidUtf8NamingThePath) {
  Json doc = Json::object({{"metrics", Json::object({{"loss", std::nan("")}})}});
  std::string message = error_of([&] { dump_json(doc); });
  EXPECT_TRUE(contains(message, "non-finite")) << message;
  EXPECT_TRUE(contains(message, "$.metrics.loss")) << message;
  message = error_of([] { dump_json(Json::array({1, 2, std::numeric_limits<double>::infinity()})); });
  EXPECT_TRUE(contains(message, "$[2]")) << message;
  message = error_of([] { dump_json(Json("bad \xFF byte")); });
  EXPECT_TRUE(contains(message, "UTF-8")) << message;
}

TEST(JsonValue, AccessErrorsAreClear) {
  Json doc = parse_json(R"({"x": 2.5, "s": "t", "b": true})");
  EXPECT_TRUE(contains(error_of([&] { doc.at("missing"); }), "key 'missing' not found"));
  EXPECT_TRUE(contains(error_of([&] { doc.at("s").get<double>(); }), "expected a number, got string"));
  EXPECT_TRUE(contains(error_of([&] { doc.at("b").get<double>(); }), "expected a number, got boolean"));
  EXPECT_TRUE(contains(error_of([&] { doc.at("x").get<int64_t>(); }), "expected an integer, got 2.5"));
  EXPECT_TRUE(contains(error_of([&] { doc.at("x").get<std::vector<int64_t>>(); }), "must be array"));
  EXPECT_THROW(doc.at("x").at(0), std::exception);
  EXPECT_EQ(parse_json("1e3").get<int64_t>(), 1000);  // a double that holds an integer
  // Messages for people drop nlohmann's error ids and keep the rest, wherever the error sits.
  EXPECT_EQ(without_json_error_ids("tensor 'w': " + error_of([&] { doc.at("missing"); })),
            "tensor 'w': key 'missing' not found");
  EXPECT_EQ(without_json_error_ids("no ids [here]"), "no ids [here]");
  Json built;
  built["b"] = 1;
  built["a"] = 2;
  built["b"] = 3;
  EXPECT_EQ(dump_json(built), R"({"b":3,"a":2})");
  Json list;
  list.push_back("x");
  EXPECT_EQ(dump_json(list), R"(["x"])");
}

// Seeds and generator offsets are full 64-bit values: they are written and read back exactly, and
// an integer that does not fit the type it is read as is an error, not a wrapped or rounded value.
TEST(JsonValue, SixtyFourBitIntegersAreExact) {
  const uint64_t seed = (uint64_t{1} << 63) + 1;
  EXPECT_EQ(dump_json(Json::object({{"seed", seed}})), R"({"seed":9223372036854775809})");
  EXPECT_EQ(parse_json(dump_json(Json(seed))).get<uint64_t>(), seed);
  EXPECT_EQ(parse_json("18446744073709551615").get<uint64_t>(), std::numeric_limits<uint64_t>::max());
  EXPECT_EQ(parse_json("-9223372036854775808").get<int64_t>(), std::numeric_limits<int64_t>::min());
  EXPECT_TRUE(contains(error_of([] { parse_json("9223372036854775809").get<int64_t>(); }),
                       "integer 9223372036854775809 is out of range"));
  EXPECT_TRUE(contains(error_of([] { parse_json("-1").get<uint64_t>(); }), "integer -1 is out of range"));
  EXPECT_TRUE(contains(error_of([] { parse_json("1e19").get<uint64_t>(); }), "expected an integer, got 1e+19"));
}

// ----------------------------------------------------------------------------------- atomic files

TEST(AtomicFile, WritesReplacesAndReadsBack) {
  TempDir dir;
  std::string path = dir.file("data.bin");
  std::string binary("a\0b\xFF\n", 5);
  write_file_atomic(path, binary);
  EXPECT_EQ(read_file(path), binary);
  write_file_atomic(path, [](std::ostream& out) { out << "new " << 42; });
  EXPECT_EQ(read_file(path), "new 42");
  std::string large(3'000'000, 'x');
  write_file_atomic(path, large);
  EXPECT_EQ(read_file(path), large);
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"data.bin"});
}

TEST(AtomicFile, WriterThrowingMidwayKeepsTheOldFile) {
  TempDir dir;
  std::string path = dir.file("summary.json");
  write_file_atomic(path, std::string("old contents"));
  std::string message = error_of([&] {
    write_file_atomic(path, [](std::ostream& out) {
      out << std::string(1 << 20, 'y');  // more than the stream buffer, so part is on disk
      throw std::runtime_error("writer failed");
    });
  });
  EXPECT_TRUE(contains(message, path)) << message;
  EXPECT_TRUE(contains(message, "writer failed")) << message;
  EXPECT_EQ(read_file(path), "old contents");
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"summary.json"});  // no temporary left behind
}

TEST(AtomicFile, FailedStreamIsAnError) {
  TempDir dir;
  std::string path = dir.file("out.txt");
  std::string message = error_of([&] {
    write_file_atomic(path, [](std::ostream& out) {
      out << "partial";
      out.setstate(std::ios::badbit);
    });
  });
  EXPECT_TRUE(contains(message, path)) << message;
  EXPECT_TRUE(dir.entries().empty());
}

TEST(AtomicFile, ErrorsNameThePath) {
  TempDir dir;
  std::string missing_dir = dir.file("no/such/dir/file.txt");
  std::string message = error_of([&] { write_file_atomic(missing_dir, std::string("x")); });
  EXPECT_TRUE(contains(message, missing_dir)) << message;
  EXPECT_TRUE(contains(message, "No such file or directory")) << message;
  std::string missing = dir.file("missing.txt");
  message = error_of([&] { read_file(missing); });
  EXPECT_TRUE(contains(message, missing)) << message;
  message = error_of([&] { read_file(dir.file("")); });
  EXPECT_TRUE(contains(message, "Is a directory")) << message;
}

// ------------------------------------------------------------------------------------ safetensors

std::string safetensors_bytes(const std::string& header, const std::string& data) {
  return bytes_of<uint64_t>({header.size()}) + header + data;
}

TEST(Safetensors, RoundTripKeepsOrderValuesAndMetadata) {
  TempDir dir;
  std::string path = dir.file("model.safetensors");
  Tensor base = Tensor::from_vector<float>({1, 2, 3, 4, 5, 6}, {2, 3});
  Tensor transposed = Tensor::view_of(base, {3, 2}, {1, 3}, 0);  // non-contiguous
  ASSERT_FALSE(transposed.is_contiguous());
  std::vector<std::pair<std::string, Tensor>> tensors = {
      {"w.t", transposed},
      {"b", Tensor::from_vector<double>({0.1, -1e300, 3}, {3})},
      {"step", Tensor::from_vector<int64_t>({int64_t{1} << 60}, {})},
      {"empty", Tensor::from_vector<float>({}, {0, 4})},
      {"idx", Tensor::from_vector<int64_t>({-1, 0, 7, 9}, {2, 1, 2})}};
  save_safetensors(path, tensors, {{"format", "pt"}, {"note", "h\xC3\xA9 \"q\""}});

  SafetensorsFile file = load_safetensors(path);
  ASSERT_EQ(file.tensors.size(), tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    const Tensor& expected = tensors[i].second;
    const Tensor& loaded = file.tensors[i].second;
    EXPECT_EQ(file.tensors[i].first, tensors[i].first);
    EXPECT_EQ(loaded.shape(), expected.shape());
    EXPECT_EQ(loaded.dtype(), expected.dtype());
    EXPECT_TRUE(loaded.device().is_cpu());
    EXPECT_EQ(loaded.to_vector<double>(), expected.to_vector<double>()) << tensors[i].first;
  }
  EXPECT_EQ(file.at("w.t").to_vector<float>(), (std::vector<float>{1, 4, 2, 5, 3, 6}));
  EXPECT_EQ(file.at("step").to_vector<int64_t>()[0], int64_t{1} << 60);
  EXPECT_EQ(file.metadata, (std::map<std::string, std::string>{{"format", "pt"}, {"note", "h\xC3\xA9 \"q\""}}));
  EXPECT_TRUE(file.contains("b"));
  std::string message = error_of([&] { file.at("nope"); });
  EXPECT_TRUE(contains(message, "'nope'") && contains(message, path)) << message;
}

TEST(Safetensors, WrittenLayoutFollowsTheSpec) {
  TempDir dir;
  std::string path = dir.file("a.safetensors");
  save_safetensors(path,
                   {{"x", Tensor::from_vector<float>({1.5f, -2}, {2})}, {"y", Tensor::from_vector<int64_t>({3}, {1})}});
  std::string bytes = read_file(path);
  uint64_t header_length;
  std::memcpy(&header_length, bytes.data(), 8);
  EXPECT_EQ(header_length % 8, 0u);
  std::string header = bytes.substr(8, header_length);
  EXPECT_EQ(
      header.substr(0, header.find_last_not_of(' ') + 1),
      R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"y":{"dtype":"I64","shape":[1],"data_offsets":[8,16]}})");
  EXPECT_EQ(bytes.substr(8 + header_length), bytes_of<float>({1.5f, -2}) + bytes_of<int64_t>({3}));
}

TEST(Safetensors, ReadsHandWrittenFile) {
  TempDir dir;
  std::string path = dir.file("hand.safetensors");
  // As other writers produce it: metadata last, data in a different order than the header.
  std::string header = R"({"b":{"dtype":"I64","shape":[2],"data_offsets":[8,24]},)"
                       R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"__metadata__":{"format":"pt"}}  )";
  write_file_atomic(path, safetensors_bytes(header, bytes_of<float>({1.0f, -2.5f}) + bytes_of<int64_t>({7, -1})));
  SafetensorsFile file = load_safetensors(path);
  ASSERT_EQ(file.tensors.size(), 2u);
  EXPECT_EQ(file.tensors[0].first, "b");
  EXPECT_EQ(file.tensors[0].second.to_vector<int64_t>(), (std::vector<int64_t>{7, -1}));
  EXPECT_EQ(file.tensors[1].first, "a");
  EXPECT_EQ(file.tensors[1].second.to_vector<float>(), (std::vector<float>{1.0f, -2.5f}));
  EXPECT_EQ(file.metadata.at("format"), "pt");
}

TEST(Safetensors, RejectsCorruptFilesNamingFileAndTensor) {
  TempDir dir;
  std::string path = dir.file("bad.safetensors");
  std::string data12(12, '\0');
  auto entry = [](const std::string& name, const std::string& dtype, const std::string& shape,
                  const std::string& offsets) {
    return "\"" + name + R"(":{"dtype":")" + dtype + R"(","shape":)" + shape + R"(,"data_offsets":)" + offsets + "}";
  };
  struct Case {
    std::string bytes, expected;
  };
  const Case cases[] = {
      {"abcd", "truncated file"},
      {bytes_of<uint64_t>({1000}) + "{}", "header length 1000 exceeds"},
      {safetensors_bytes("{\"a\":", ""), "malformed JSON header"},
      {safetensors_bytes("[]", ""), "malformed JSON header"},
      {safetensors_bytes("{" + entry("w", "BF16", "[2]", "[0,4]") + "}", std::string(4, '\0')),
       "tensor 'w': unsupported dtype 'BF16'"},
      {safetensors_bytes("{" + entry("w", "F32", "[4]", "[0,16]") + "}", data12),
       "tensor 'w': data_offsets [0, 16] out of range"},
      {safetensors_bytes("{" + entry("w", "F32", "[2]", "[0,12]") + "}", data12),
       "tensor 'w': data_offsets span 12 bytes"},
      {safetensors_bytes("{" + entry("w", "F32", "[2]", "[8,4]") + "}", data12), "tensor 'w': invalid data_offsets"},
      {safetensors_bytes("{" + entry("w", "F32", "[2]", "[0]") + "}", data12), "tensor 'w': data_offsets must be"},
      {safetensors_bytes("{" + entry("w", "F32", "[-1]", "[0,0]") + "}", ""), "tensor 'w': negative dimension"},
      {safetensors_bytes("{" + entry("w", "F32", "\"x\"", "[0,0]") + "}", ""),
       "tensor 'w': type must be array, but is string"},
      {safetensors_bytes("{" + entry("w", "F32", "[2.5]", "[0,0]") + "}", ""),
       "tensor 'w': JSON: expected an integer, got 2.5"},
      {safetensors_bytes(R"({"w":{"shape":[],"data_offsets":[0,4]}})", data12),
       "tensor 'w': key 'dtype' not found"},
      // A header naming a tensor twice: which of the two would be the tensor?
      {safetensors_bytes("{" + entry("w", "F32", "[1]", "[0,4]") + "," + entry("w", "F32", "[2]", "[4,12]") + "}",
                         data12),
       "malformed JSON header: JSON parse error at line 1, column 57: duplicate key \"w\""},
      {safetensors_bytes("{" + entry("a", "F32", "[2]", "[0,8]") + "," + entry("b", "F32", "[2]", "[4,12]") + "}",
                         data12),
       "tensors 'a' and 'b' overlap"},
      {safetensors_bytes("{" + entry("a", "F32", "[2]", "[4,12]") + "}", data12),
       "data bytes [0, 4) before tensor 'a'"},
      {safetensors_bytes("{" + entry("a", "F32", "[2]", "[0,8]") + "}", data12), "data bytes [8, 12) at the end"},
      {safetensors_bytes(R"({"__metadata__":{"n":1}})", ""), "__metadata__: __metadata__ must map strings to strings"},
  };
  for (const Case& c : cases) {
    write_file_atomic(path, c.bytes);
    std::string message = error_of([&] { load_safetensors(path); });
    EXPECT_TRUE(contains(message, path) && contains(message, c.expected))
        << "got: " << message << "\nwanted: " << c.expected;
  }
}

TEST(Safetensors, SaveRejectsBadNames) {
  TempDir dir;
  std::string path = dir.file("x.safetensors");
  Tensor t = Tensor::from_vector<float>({1}, {1});
  EXPECT_TRUE(contains(error_of([&] { save_safetensors(path, {{"a", t}, {"a", t}}); }), "duplicate tensor name 'a'"));
  EXPECT_TRUE(contains(error_of([&] { save_safetensors(path, {{"__metadata__", t}}); }), "reserved"));
  EXPECT_TRUE(dir.entries().empty());
}

// ------------------------------------------------------------------------------------------- npy

// np.save(f, np.array([1.0, -2.5], dtype=np.float32)), byte for byte.
std::string numpy_float32_file() {
  std::string dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }";
  return std::string("\x93NUMPY\x01\x00\x76\x00", 10) + dict + std::string(60, ' ') + "\n" +
         std::string("\x00\x00\x80\x3f\x00\x00\x20\xc0", 8);
}

std::string npy_bytes(const std::string& dict, const std::string& data, int major = 1) {
  std::string length = major == 1 ? bytes_of<uint16_t>({static_cast<uint16_t>(dict.size() + 1)})
                                  : bytes_of<uint32_t>({static_cast<uint32_t>(dict.size() + 1)});
  return "\x93NUMPY" + std::string(1, static_cast<char>(major)) + std::string(1, '\0') + length + dict + "\n" + data;
}

TEST(Npy, MatchesNumpyBytes) {
  TempDir dir;
  std::string path = dir.file("a.npy");
  write_file_atomic(path, numpy_float32_file());
  Tensor loaded = load_npy(path);
  EXPECT_EQ(loaded.shape(), Shape{2});
  EXPECT_EQ(loaded.dtype(), DType::Float32);
  EXPECT_EQ(loaded.to_vector<float>(), (std::vector<float>{1.0f, -2.5f}));
  std::string written = dir.file("b.npy");
  save_npy(written, loaded);
  EXPECT_EQ(read_file(written), numpy_float32_file());
}

TEST(Npy, RoundTripsDtypesShapesAndLayouts) {
  TempDir dir;
  std::string path = dir.file("t.npy");
  Tensor base = Tensor::from_vector<double>({1, 2, 3, 4, 5, 6}, {2, 3});
  const Tensor tensors[] = {Tensor::view_of(base, {3, 2}, {1, 3}, 0), Tensor::from_vector<float>({3.5f}, {}),
                            Tensor::from_vector<int64_t>({}, {0, 3}),
                            Tensor::from_vector<int64_t>({-5, 1, int64_t{1} << 62, 0, 2, 3}, {3, 1, 2})};
  for (const Tensor& tensor : tensors) {
    save_npy(path, tensor);
    std::string bytes = read_file(path);
    EXPECT_EQ((bytes.size() - tensor.numel() * dtype_size(tensor.dtype())) % 64, 0u);
    Tensor loaded = load_npy(path);
    EXPECT_EQ(loaded.shape(), tensor.shape());
    EXPECT_EQ(loaded.dtype(), tensor.dtype());
    EXPECT_EQ(loaded.to_vector<double>(), tensor.to_vector<double>());
  }
}

TEST(Npy, ReadsVersion2AndPython2Headers) {
  TempDir dir;
  std::string path = dir.file("v2.npy");
  write_file_atomic(path, npy_bytes("{'descr': '<i8', 'fortran_order': False, 'shape': (2, 2)}",
                                    bytes_of<int64_t>({1, -2, 3, int64_t{1} << 40}), 2));
  EXPECT_EQ(load_npy(path).to_vector<int64_t>(), (std::vector<int64_t>{1, -2, 3, int64_t{1} << 40}));
  write_file_atomic(
      path, npy_bytes("{\"shape\": (1L,), \"fortran_order\": False, \"descr\": \"<f8\",}", bytes_of<double>({0.25})));
  Tensor loaded = load_npy(path);
  EXPECT_EQ(loaded.dtype(), DType::Float64);
  EXPECT_EQ(loaded.to_vector<double>(), std::vector<double>{0.25});
}

TEST(Npy, WritesVersion2WhenTheHeaderIsLarge) {
  TempDir dir;
  std::string path = dir.file("many_dims.npy");
  Tensor tensor = Tensor::from_vector<float>({7}, Shape(30000, 1));  // "1, " per dimension overflows 65535
  save_npy(path, tensor);
  EXPECT_EQ(read_file(path)[6], '\x02');
  Tensor loaded = load_npy(path);
  EXPECT_EQ(loaded.shape(), tensor.shape());
  EXPECT_EQ(loaded.to_vector<float>(), std::vector<float>{7});
}

TEST(Npy, RejectsUnsupportedAndCorruptFiles) {
  TempDir dir;
  std::string path = dir.file("bad.npy");
  auto dict = [](const std::string& descr, const std::string& order, const std::string& shape) {
    return "{'descr': '" + descr + "', 'fortran_order': " + order + ", 'shape': " + shape + ", }";
  };
  std::string eight(8, '\0');
  struct Case {
    std::string bytes, expected;
  };
  const Case cases[] = {
      {"PK\x03\x04 not npy", "missing the \\x93NUMPY magic"},
      {npy_bytes(dict("<f4", "False", "(2,)"), eight, 3), "unsupported format version 3.0"},
      {std::string("\x93NUMPY\x01\x00\x40\x00{'descr'", 17), "truncated header"},
      {npy_bytes(dict("<f4", "True", "(2,)"), eight), "fortran_order arrays are not supported"},
      {npy_bytes(dict("<i4", "False", "(2,)"), eight), "unsupported dtype '<i4'"},
      {npy_bytes(dict(">f4", "False", "(2,)"), eight), "big-endian data ('>f4')"},
      {npy_bytes(dict("<f8", "False", "(2,)"), eight),
       "truncated data: shape [2] of float64 needs 16 bytes, the file has 8"},
      {npy_bytes(dict("<f4", "False", "(1,)"), eight), "unexpected trailing bytes"},
      {npy_bytes(dict("<f4", "False", "(-2,)"), eight), "shape must be a tuple"},
      {npy_bytes("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,), }", eight), "structured arrays"},
      {npy_bytes("{'descr': '<f4', 'shape': (2,), }", eight), "must have 'descr', 'fortran_order' and 'shape'"},
      {npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (2,) ", eight), "expected '}'"},
  };
  for (const Case& c : cases) {
    write_file_atomic(path, c.bytes);
    std::string message = error_of([&] { load_npy(path); });
    EXPECT_TRUE(contains(message, path) && contains(message, c.expected))
        << "got: " << message << "\nwanted: " << c.expected;
  }
}

}  // namespace
}  // namespace ml
