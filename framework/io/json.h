// A small JSON value with a strict parser and a compact serializer.
// Used for metrics.jsonl lines, summary.json, safetensors headers and benchmark output.
#pragma once
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace ml {

class Json {
 public:
  enum class Type { Null, Bool, Number, String, Array, Object };
  using Array = std::vector<Json>;
  // Keys keep insertion order so written files read in the order they were built.
  using Object = std::vector<std::pair<std::string, Json>>;

  Json() = default;
  Json(std::nullptr_t) {}
  Json(bool value) : type_(Type::Bool), bool_(value) {}
  // Numbers are doubles; integers beyond 2^53 would silently lose digits, so they are rejected.
  template <typename T, typename = std::enable_if_t<std::is_arithmetic_v<T> && !std::is_same_v<T, bool>>>
  Json(T value) : type_(Type::Number), number_(static_cast<double>(value)) {
    if constexpr (std::is_integral_v<T>) check_exact_integer(value);
  }
  Json(const char* value) : type_(Type::String), string_(value) {}
  Json(std::string value) : type_(Type::String), string_(std::move(value)) {}
  Json(Array values) : type_(Type::Array), array_(std::move(values)) {}
  Json(Object members) : type_(Type::Object), object_(std::move(members)) {}
  static Json array(std::initializer_list<Json> values = {}) { return Json(Array(values)); }
  static Json object(std::initializer_list<std::pair<std::string, Json>> members = {});

  Type type() const { return type_; }
  bool is_null() const { return type_ == Type::Null; }
  bool is_bool() const { return type_ == Type::Bool; }
  bool is_number() const { return type_ == Type::Number; }
  bool is_string() const { return type_ == Type::String; }
  bool is_array() const { return type_ == Type::Array; }
  bool is_object() const { return type_ == Type::Object; }

  // Typed access; each throws std::runtime_error naming the expected and actual type.
  bool as_bool() const;
  double as_number() const;
  int64_t as_int() const;  // also throws unless the number is an integer within +-2^53
  const std::string& as_string() const;
  const Array& as_array() const;
  Array& as_array();
  const Object& as_object() const;
  Object& as_object();

  // Object access. `at` throws naming the missing key; `find` returns null when absent;
  // operator[] turns a null value into an object and appends the key when missing.
  bool contains(const std::string& key) const { return find(key) != nullptr; }
  const Json* find(const std::string& key) const;
  const Json& at(const std::string& key) const;
  Json& operator[](const std::string& key);
  // Array access.
  const Json& at(size_t index) const;
  void push_back(Json value);  // turns a null value into an array
  size_t size() const;         // elements of an array or members of an object

  // Compact form (no whitespace). Throws on NaN/Inf and on strings that are not valid UTF-8.
  std::string dump() const;
  // Strict RFC 8259 parsing of one value; errors give line and column.
  static Json parse(const std::string& text);

  // Objects compare member by member, in order.
  bool operator==(const Json& other) const;
  bool operator!=(const Json& other) const { return !(*this == other); }

 private:
  template <typename T>
  static void check_exact_integer(T value) {
    constexpr long long limit = 1LL << 53;
    if (std::is_signed_v<T> ? static_cast<long long>(value) > limit || static_cast<long long>(value) < -limit
                            : static_cast<unsigned long long>(value) > static_cast<unsigned long long>(limit))
      throw_inexact_integer(std::to_string(value));
  }
  [[noreturn]] static void throw_inexact_integer(const std::string& text);
  void dump_to(std::string& out) const;

  Type type_ = Type::Null;
  bool bool_ = false;
  double number_ = 0;
  std::string string_;
  Array array_;
  Object object_;
};

const char* json_type_name(Json::Type type);

}  // namespace ml
