#include "framework/io/npy.h"

#include <cctype>
#include <cstring>
#include <stdexcept>

#include "framework/io/atomic_file.h"
#include "framework/io/tensor_bytes.h"

namespace ml {
namespace {

const char kMagic[] = "\x93NUMPY";
constexpr size_t kMagicSize = 6;

const char* descr_of(DType dtype) {
  switch (dtype) {
    case DType::Float32:
      return "<f4";
    case DType::Float64:
      return "<f8";
    case DType::Int64:
      return "<i8";
  }
  return "?";
}

DType dtype_of_descr(const std::string& descr) {
  for (DType dtype : {DType::Float32, DType::Float64, DType::Int64})
    if (descr == descr_of(dtype)) return dtype;
  if (!descr.empty() && descr[0] == '>') throw std::runtime_error("big-endian data ('" + descr + "') is not supported");
  throw std::runtime_error("unsupported dtype '" + descr + "' (supported: <f4, <f8, <i8)");
}

struct Header {
  DType dtype = DType::Float32;
  Shape shape;
};

// Reads the Python dict literal numpy writes, e.g.
// {'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }
class HeaderParser {
 public:
  explicit HeaderParser(const std::string& text) : text_(text) {}

  Header parse() {
    Header header;
    bool seen_descr = false, seen_order = false, seen_shape = false;
    expect('{');
    while (!consume('}')) {
      std::string key = read_string();
      expect(':');
      if (key == "descr") {
        if (peek() != '\'' && peek() != '"') throw std::runtime_error("structured arrays are not supported");
        header.dtype = dtype_of_descr(read_string());
        seen_descr = true;
      } else if (key == "fortran_order") {
        std::string order = read_word();
        if (order == "True")
          throw std::runtime_error(
              "fortran_order arrays are not supported; save a C-order array (np.ascontiguousarray)");
        if (order != "False") throw error("fortran_order must be True or False");
        seen_order = true;
      } else if (key == "shape") {
        header.shape = read_shape();
        seen_shape = true;
      } else {
        throw error("unexpected key '" + key + "'");
      }
      if (!consume(',')) {
        expect('}');
        break;
      }
    }
    skip_whitespace();
    if (pos_ != text_.size()) throw error("unexpected text after the dict");
    if (!seen_descr || !seen_order || !seen_shape)
      throw error("the dict must have 'descr', 'fortran_order' and 'shape'");
    return header;
  }

 private:
  std::runtime_error error(const std::string& what) const {
    return std::runtime_error("malformed header " + text_.substr(0, text_.find_last_not_of(" \n") + 1) + ": " + what);
  }
  void skip_whitespace() {
    while (pos_ < text_.size() && (text_[pos_] == ' ' || text_[pos_] == '\n' || text_[pos_] == '\t')) ++pos_;
  }
  char peek() {
    skip_whitespace();
    return pos_ < text_.size() ? text_[pos_] : '\0';
  }
  bool consume(char c) {
    if (peek() != c) return false;
    ++pos_;
    return true;
  }
  void expect(char c) {
    if (!consume(c)) throw error(std::string("expected '") + c + "'");
  }
  std::string read_string() {
    char quote = peek();
    if (quote != '\'' && quote != '"') throw error("expected a quoted string");
    size_t end = text_.find(quote, pos_ + 1);
    if (end == std::string::npos) throw error("unterminated string");
    std::string value = text_.substr(pos_ + 1, end - pos_ - 1);
    pos_ = end + 1;
    return value;
  }
  std::string read_word() {
    peek();
    size_t start = pos_;
    while (pos_ < text_.size() && std::isalnum(static_cast<unsigned char>(text_[pos_]))) ++pos_;
    return text_.substr(start, pos_ - start);
  }
  Shape read_shape() {
    Shape shape;
    expect('(');
    while (!consume(')')) {
      std::string digits = read_word();
      // Files written by Python 2 mark long integers with a trailing L.
      if (!digits.empty() && digits.back() == 'L') digits.pop_back();
      if (digits.empty() || digits.size() > 18 || digits.find_first_not_of("0123456789") != std::string::npos)
        throw error("shape must be a tuple of non-negative integers");
      shape.push_back(std::stoll(digits));
      if (!consume(',')) {
        expect(')');
        break;
      }
    }
    return shape;
  }

  const std::string& text_;
  size_t pos_ = 0;
};

std::string shape_tuple(const Shape& shape) {
  std::string text = "(";
  for (size_t i = 0; i < shape.size(); ++i) text += (i ? ", " : "") + std::to_string(shape[i]);
  return text + (shape.size() == 1 ? ",)" : ")");
}

}  // namespace

Tensor load_npy(const std::string& path) {
  auto fail = [&](const std::string& what) { return std::runtime_error("npy '" + path + "': " + what); };
  std::string bytes = read_file(path);
  if (bytes.size() < kMagicSize + 2 || bytes.compare(0, kMagicSize, kMagic) != 0)
    throw fail("not a .npy file (missing the \\x93NUMPY magic)");
  int major = static_cast<unsigned char>(bytes[6]), minor = static_cast<unsigned char>(bytes[7]);
  if ((major != 1 && major != 2) || minor != 0)
    throw fail("unsupported format version " + std::to_string(major) + "." + std::to_string(minor) +
               " (supported: 1.0, 2.0)");
  // Version 1.0 stores the header length in 2 bytes, 2.0 in 4 (both little-endian).
  size_t length_size = major == 1 ? 2 : 4;
  size_t prefix = kMagicSize + 2 + length_size;
  if (bytes.size() < prefix) throw fail("truncated header");
  uint32_t header_length = 0;
  std::memcpy(&header_length, bytes.data() + kMagicSize + 2, length_size);
  if (bytes.size() - prefix < header_length) throw fail("truncated header");

  Header header;
  uint64_t expected = 0;
  try {
    header = HeaderParser(bytes.substr(prefix, header_length)).parse();
    expected = tensor_byte_size(header.shape, header.dtype);
  } catch (const std::exception& e) {
    throw fail(e.what());
  }
  uint64_t found = bytes.size() - prefix - header_length;
  if (found != expected)
    throw fail((found < expected ? "truncated data: " : "unexpected trailing bytes: ") + std::string("shape ") +
               shape_str(header.shape) + " of " + dtype_name(header.dtype) + " needs " + std::to_string(expected) +
               " bytes, the file has " + std::to_string(found));
  return tensor_from_bytes(bytes.data() + prefix + header_length, header.shape, header.dtype);
}

void save_npy(const std::string& path, const Tensor& tensor) {
  if (!tensor.defined()) throw std::invalid_argument("npy '" + path + "': the tensor is undefined");
  std::string dict = std::string("{'descr': '") + descr_of(tensor.dtype()) +
                     "', 'fortran_order': False, 'shape': " + shape_tuple(tensor.shape()) + ", }";
  // Like numpy: pad with spaces and end with a newline so the data starts 64-byte aligned.
  auto padded_header = [&](size_t prefix) {
    std::string header = dict;
    header.append((64 - (prefix + header.size() + 1) % 64) % 64, ' ');
    return header + '\n';
  };
  int major = 1;
  std::string header = padded_header(kMagicSize + 4);
  if (header.size() > 0xFFFF) {
    major = 2;
    header = padded_header(kMagicSize + 6);
  }
  write_file_atomic(path, [&](std::ostream& out) {
    out.write(kMagic, kMagicSize);
    out.put(static_cast<char>(major)).put(0);
    uint32_t length = static_cast<uint32_t>(header.size());
    out.write(reinterpret_cast<const char*>(&length), major == 1 ? 2 : 4);
    out << header;
    write_tensor_bytes(out, tensor);
  });
}

}  // namespace ml
