#include "framework/io/json.h"

#include <charconv>
#include <cmath>
#include <cstdio>
#include <stdexcept>

namespace ml {
namespace {

constexpr double kMaxExactInteger = 9007199254740992.0;  // 2^53
// Deep enough for any real document; stops malicious input from overflowing the stack.
constexpr int kMaxDepth = 512;

// Length of the valid UTF-8 sequence starting at s[pos], or 0 when it is malformed
// (overlong forms, surrogates and code points above U+10FFFF count as malformed).
size_t utf8_sequence_length(const std::string& s, size_t pos) {
  auto byte = [&](size_t i) { return pos + i < s.size() ? static_cast<unsigned char>(s[pos + i]) : 0u; };
  unsigned lead = byte(0);
  if (lead < 0x80) return 1;
  size_t length;
  unsigned low = 0x80, high = 0xBF;  // allowed range of the second byte
  if (lead >= 0xC2 && lead <= 0xDF) {
    length = 2;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    length = 3;
    if (lead == 0xE0) low = 0xA0;
    if (lead == 0xED) high = 0x9F;
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    length = 4;
    if (lead == 0xF0) low = 0x90;
    if (lead == 0xF4) high = 0x8F;
  } else {
    return 0;
  }
  if (byte(1) < low || byte(1) > high) return 0;
  for (size_t i = 2; i < length; ++i)
    if (byte(i) < 0x80 || byte(i) > 0xBF) return 0;
  return length;
}

void append_utf8(std::string& out, uint32_t code_point) {
  if (code_point < 0x80) {
    out += static_cast<char>(code_point);
  } else if (code_point < 0x800) {
    out += static_cast<char>(0xC0 | (code_point >> 6));
    out += static_cast<char>(0x80 | (code_point & 0x3F));
  } else if (code_point < 0x10000) {
    out += static_cast<char>(0xE0 | (code_point >> 12));
    out += static_cast<char>(0x80 | ((code_point >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (code_point & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (code_point >> 18));
    out += static_cast<char>(0x80 | ((code_point >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((code_point >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (code_point & 0x3F));
  }
}

std::string describe_char(char c) {
  if (c >= 0x20 && c < 0x7F) return std::string("'") + c + "'";
  char buffer[16];
  std::snprintf(buffer, sizeof buffer, "byte 0x%02X", static_cast<unsigned char>(c));
  return buffer;
}

class Parser {
 public:
  explicit Parser(const std::string& text) : text_(text) {}

  Json parse_document() {
    skip_whitespace();
    Json value = parse_value(0);
    skip_whitespace();
    if (pos_ != text_.size()) fail("unexpected " + describe_char(text_[pos_]) + " after the value");
    return value;
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    size_t line = 1, column = 1;
    for (size_t i = 0; i < pos_ && i < text_.size(); ++i) {
      if (text_[i] == '\n') {
        ++line;
        column = 1;
      } else {
        ++column;
      }
    }
    throw std::runtime_error("JSON parse error at line " + std::to_string(line) + ", column " + std::to_string(column) +
                             ": " + what);
  }

  bool at_end() const { return pos_ >= text_.size(); }
  char peek() const { return at_end() ? '\0' : text_[pos_]; }

  void skip_whitespace() {
    while (!at_end() && (peek() == ' ' || peek() == '\t' || peek() == '\n' || peek() == '\r')) ++pos_;
  }

  void expect(char c) {
    if (at_end()) fail(std::string("expected '") + c + "' but the input ended");
    if (peek() != c) fail(std::string("expected '") + c + "' but found " + describe_char(peek()));
    ++pos_;
  }

  void expect_word(const char* word) {
    for (const char* p = word; *p; ++p) {
      if (peek() != *p) fail(std::string("invalid literal, expected '") + word + "'");
      ++pos_;
    }
  }

  Json parse_value(int depth) {
    if (depth > kMaxDepth) fail("nesting deeper than " + std::to_string(kMaxDepth) + " levels");
    if (at_end()) fail("unexpected end of input, expected a value");
    char c = peek();
    switch (c) {
      case '{':
        return parse_object(depth);
      case '[':
        return parse_array(depth);
      case '"':
        return Json(parse_string());
      case 't':
        expect_word("true");
        return Json(true);
      case 'f':
        expect_word("false");
        return Json(false);
      case 'n':
        expect_word("null");
        return Json();
      default:
        if (c == '-' || (c >= '0' && c <= '9')) return Json(parse_number());
        fail("unexpected " + describe_char(c) + ", expected a value");
    }
  }

  Json parse_object(int depth) {
    ++pos_;  // '{'
    Json::Object members;
    skip_whitespace();
    if (peek() == '}') {
      ++pos_;
      return Json(std::move(members));
    }
    while (true) {
      skip_whitespace();
      if (peek() != '"') fail(at_end() ? "unexpected end of input, expected a key" : "expected a string key");
      size_t key_pos = pos_;
      std::string key = parse_string();
      for (const auto& member : members) {
        if (member.first == key) {
          pos_ = key_pos;
          fail("duplicate key \"" + key + "\"");
        }
      }
      skip_whitespace();
      expect(':');
      skip_whitespace();
      members.emplace_back(std::move(key), parse_value(depth + 1));
      skip_whitespace();
      if (peek() == '}') {
        ++pos_;
        return Json(std::move(members));
      }
      if (peek() != ',') fail(at_end() ? "unexpected end of input in an object" : "expected ',' or '}' in an object");
      ++pos_;
    }
  }

  Json parse_array(int depth) {
    ++pos_;  // '['
    Json::Array values;
    skip_whitespace();
    if (peek() == ']') {
      ++pos_;
      return Json(std::move(values));
    }
    while (true) {
      skip_whitespace();
      values.push_back(parse_value(depth + 1));
      skip_whitespace();
      if (peek() == ']') {
        ++pos_;
        return Json(std::move(values));
      }
      if (peek() != ',') fail(at_end() ? "unexpected end of input in an array" : "expected ',' or ']' in an array");
      ++pos_;
    }
  }

  uint32_t parse_hex4() {
    uint32_t value = 0;
    for (int i = 0; i < 4; ++i) {
      char c = peek();
      int digit = c >= '0' && c <= '9'   ? c - '0'
                  : c >= 'a' && c <= 'f' ? c - 'a' + 10
                  : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                         : -1;
      if (digit < 0) fail("invalid \\u escape, expected 4 hex digits");
      value = value * 16 + static_cast<uint32_t>(digit);
      ++pos_;
    }
    return value;
  }

  uint32_t parse_unicode_escape() {
    uint32_t code = parse_hex4();
    if (code >= 0xDC00 && code <= 0xDFFF) fail("unpaired low surrogate in \\u escape");
    if (code < 0xD800 || code > 0xDBFF) return code;
    if (peek() != '\\' || pos_ + 1 >= text_.size() || text_[pos_ + 1] != 'u')
      fail("high surrogate in \\u escape must be followed by a low surrogate");
    pos_ += 2;
    uint32_t low = parse_hex4();
    if (low < 0xDC00 || low > 0xDFFF) fail("high surrogate in \\u escape must be followed by a low surrogate");
    return 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
  }

  std::string parse_string() {
    ++pos_;  // opening quote
    std::string out;
    while (true) {
      if (at_end()) fail("unterminated string");
      char c = text_[pos_];
      if (c == '"') {
        ++pos_;
        return out;
      }
      if (static_cast<unsigned char>(c) < 0x20)
        fail("unescaped control character (" + describe_char(c) + ") in string");
      if (c == '\\') {
        ++pos_;
        char e = peek();
        ++pos_;
        switch (e) {
          case '"':
            out += '"';
            break;
          case '\\':
            out += '\\';
            break;
          case '/':
            out += '/';
            break;
          case 'b':
            out += '\b';
            break;
          case 'f':
            out += '\f';
            break;
          case 'n':
            out += '\n';
            break;
          case 'r':
            out += '\r';
            break;
          case 't':
            out += '\t';
            break;
          case 'u':
            append_utf8(out, parse_unicode_escape());
            break;
          default:
            --pos_;
            fail("invalid escape \\" + std::string(1, e));
        }
        continue;
      }
      size_t length = utf8_sequence_length(text_, pos_);
      if (length == 0) fail("invalid UTF-8 in string");
      out.append(text_, pos_, length);
      pos_ += length;
    }
  }

  double parse_number() {
    size_t start = pos_;
    auto digits = [&] {
      size_t first = pos_;
      while (peek() >= '0' && peek() <= '9') ++pos_;
      return pos_ - first;
    };
    if (peek() == '-') ++pos_;
    if (peek() == '0') {
      ++pos_;
      if (peek() >= '0' && peek() <= '9') fail("leading zeros are not allowed in numbers");
    } else if (digits() == 0) {
      fail("invalid number");
    }
    if (peek() == '.') {
      ++pos_;
      if (digits() == 0) fail("expected digits after the decimal point");
    }
    if (peek() == 'e' || peek() == 'E') {
      ++pos_;
      if (peek() == '+' || peek() == '-') ++pos_;
      if (digits() == 0) fail("expected digits in the exponent");
    }
    double value = 0;
    auto result = std::from_chars(text_.data() + start, text_.data() + pos_, value);
    if (result.ec != std::errc()) {
      std::string number = text_.substr(start, pos_ - start);
      pos_ = start;
      fail("number " + number + " is out of double range");
    }
    return value;
  }

  const std::string& text_;
  size_t pos_ = 0;
};

// Thrown while serializing; `path` grows as the exception unwinds through arrays and objects.
struct DumpError {
  std::string what;
  std::string path;
};

void append_escaped(std::string& out, const std::string& s) {
  out += '"';
  for (size_t i = 0; i < s.size();) {
    char c = s[i];
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buffer[8];
          std::snprintf(buffer, sizeof buffer, "\\u%04x", static_cast<unsigned>(c));
          out += buffer;
        } else {
          size_t length = utf8_sequence_length(s, i);
          if (length == 0) throw DumpError{"string is not valid UTF-8", ""};
          out.append(s, i, length);
          i += length;
          continue;
        }
    }
    ++i;
  }
  out += '"';
}

// Integers print without exponent (1e15 -> "1000000000000000") so that readers expecting
// integers (safetensors offsets) accept them; everything else uses the shortest exact form.
std::string format_number(double value) {
  if (!std::isfinite(value)) return std::to_string(value);
  char buffer[32];
  bool integral = std::fabs(value) < 1e17 && value == std::trunc(value);
  auto result = integral ? std::to_chars(buffer, buffer + sizeof buffer, value, std::chars_format::fixed)
                         : std::to_chars(buffer, buffer + sizeof buffer, value);
  return std::string(buffer, result.ptr);
}

void append_number(std::string& out, double value) {
  if (!std::isfinite(value)) throw DumpError{"cannot serialize non-finite number " + format_number(value), ""};
  out += format_number(value);
}

std::runtime_error type_error(const char* expected, Json::Type actual) {
  return std::runtime_error(std::string("JSON: expected ") + expected + ", got " + json_type_name(actual));
}

}  // namespace

const char* json_type_name(Json::Type type) {
  switch (type) {
    case Json::Type::Null:
      return "null";
    case Json::Type::Bool:
      return "bool";
    case Json::Type::Number:
      return "number";
    case Json::Type::String:
      return "string";
    case Json::Type::Array:
      return "array";
    case Json::Type::Object:
      return "object";
  }
  return "?";
}

Json Json::object(std::initializer_list<std::pair<std::string, Json>> members) {
  Json result{Object{}};
  for (const auto& member : members) result[member.first] = member.second;
  return result;
}

void Json::throw_inexact_integer(const std::string& text) {
  throw std::invalid_argument("JSON: integer " + text + " is beyond 2^53 and cannot be stored exactly");
}

bool Json::as_bool() const {
  if (type_ != Type::Bool) throw type_error("bool", type_);
  return bool_;
}

double Json::as_number() const {
  if (type_ != Type::Number) throw type_error("number", type_);
  return number_;
}

int64_t Json::as_int() const {
  double value = as_number();
  if (value != std::trunc(value) || std::fabs(value) > kMaxExactInteger)
    throw std::runtime_error("JSON: expected an integer, got " + format_number(value));
  return static_cast<int64_t>(value);
}

const std::string& Json::as_string() const {
  if (type_ != Type::String) throw type_error("string", type_);
  return string_;
}

const Json::Array& Json::as_array() const {
  if (type_ != Type::Array) throw type_error("array", type_);
  return array_;
}

Json::Array& Json::as_array() {
  if (type_ != Type::Array) throw type_error("array", type_);
  return array_;
}

const Json::Object& Json::as_object() const {
  if (type_ != Type::Object) throw type_error("object", type_);
  return object_;
}

Json::Object& Json::as_object() {
  if (type_ != Type::Object) throw type_error("object", type_);
  return object_;
}

const Json* Json::find(const std::string& key) const {
  for (const auto& member : as_object())
    if (member.first == key) return &member.second;
  return nullptr;
}

const Json& Json::at(const std::string& key) const {
  const Json* value = find(key);
  if (!value) throw std::runtime_error("JSON: missing key \"" + key + "\"");
  return *value;
}

Json& Json::operator[](const std::string& key) {
  if (type_ == Type::Null) type_ = Type::Object;
  for (auto& member : as_object())
    if (member.first == key) return member.second;
  object_.emplace_back(key, Json());
  return object_.back().second;
}

const Json& Json::at(size_t index) const {
  const Array& values = as_array();
  if (index >= values.size())
    throw std::runtime_error("JSON: index " + std::to_string(index) + " out of range for an array of " +
                             std::to_string(values.size()));
  return values[index];
}

void Json::push_back(Json value) {
  if (type_ == Type::Null) type_ = Type::Array;
  as_array().push_back(std::move(value));
}

size_t Json::size() const {
  if (type_ == Type::Array) return array_.size();
  if (type_ == Type::Object) return object_.size();
  throw type_error("array or object", type_);
}

void Json::dump_to(std::string& out) const {
  switch (type_) {
    case Type::Null:
      out += "null";
      break;
    case Type::Bool:
      out += bool_ ? "true" : "false";
      break;
    case Type::Number:
      append_number(out, number_);
      break;
    case Type::String:
      append_escaped(out, string_);
      break;
    case Type::Array:
      out += '[';
      for (size_t i = 0; i < array_.size(); ++i) {
        if (i) out += ',';
        try {
          array_[i].dump_to(out);
        } catch (DumpError& e) {
          e.path = "[" + std::to_string(i) + "]" + e.path;
          throw;
        }
      }
      out += ']';
      break;
    case Type::Object:
      out += '{';
      for (size_t i = 0; i < object_.size(); ++i) {
        if (i) out += ',';
        try {
          append_escaped(out, object_[i].first);
          out += ':';
          object_[i].second.dump_to(out);
        } catch (DumpError& e) {
          e.path = "." + object_[i].first + e.path;
          throw;
        }
      }
      out += '}';
      break;
  }
}

std::string Json::dump() const {
  std::string out;
  try {
    dump_to(out);
  } catch (const DumpError& e) {
    throw std::runtime_error("JSON: " + e.what + " at $" + e.path);
  }
  return out;
}

Json Json::parse(const std::string& text) { return Parser(text).parse_document(); }

bool Json::operator==(const Json& other) const {
  if (type_ != other.type_) return false;
  switch (type_) {
    case Type::Null:
      return true;
    case Type::Bool:
      return bool_ == other.bool_;
    case Type::Number:
      return number_ == other.number_;
    case Type::String:
      return string_ == other.string_;
    case Type::Array:
      return array_ == other.array_;
    case Type::Object:
      return object_ == other.object_;
  }
  return false;
}

}  // namespace ml
