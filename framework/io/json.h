// JSON values are nlohmann::json's, with object keys in insertion order (written files read in
// the order they were built) and numbers read exactly (ExactNumbers). Used for metrics.jsonl
// lines, summary.json, checkpoint manifests, safetensors headers and benchmark output.
//
// Parse with parse_json and write with dump_json, not nlohmann's parse and dump: parse_json also
// rejects duplicate keys (a safetensors header naming a tensor twice) and deep nesting, and
// dump_json writes numbers the way every earlier muonlab file has them.
#pragma once
#include <cmath>
#include <cstdint>
#include <limits>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

namespace ml {

template <typename T, typename = void>
struct ExactNumbers;

using Json = nlohmann::basic_json<nlohmann::ordered_map, std::vector, std::string, bool, std::int64_t, std::uint64_t,
                                  double, std::allocator, ExactNumbers>;

// Strict RFC 8259 parsing of one value, with no duplicate keys and at most 512 levels of nesting;
// errors (std::runtime_error) give line and column.
Json parse_json(const std::string& text);

// Compact form (no whitespace). Integers, and doubles that hold one below 1e17, print without a
// fraction (975, where nlohmann writes 975.0); other doubles in their shortest exact form (3e-04,
// where nlohmann writes 0.0003). Throws on NaN/Inf and on strings that are not valid UTF-8, naming
// the path.
std::string dump_json(const Json& value);

// `message` without the ids nlohmann puts in front of its errors ("[json.exception.type_error.302]
// type must be array, but is string" -> "type must be array, but is string"): they name a line of
// nlohmann's documentation, which is for programmers; a message for people names the file and key.
std::string without_json_error_ids(const std::string& message);

// Everything but numbers converts as nlohmann converts it.
template <typename T, typename>
struct ExactNumbers : nlohmann::adl_serializer<T> {};

// nlohmann's get<int64_t>() would truncate 2.5 to 2, wrap 2^64 - 1 to -1 and read true as 1: here a
// number read is the number in the file, or a std::runtime_error. A double that holds an integer
// within +-2^53 (where doubles are exact) still reads as that integer, as it always has ("1e3").
template <typename T>
struct ExactNumbers<T, std::enable_if_t<std::is_arithmetic_v<T> && !std::is_same_v<T, bool>>>
    : nlohmann::adl_serializer<T> {
  static void from_json(const Json& json, T& value) {
    // Unsigned first: nlohmann's get_ptr for signed integers also points into unsigned ones.
    if (const auto* natural = json.get_ptr<const Json::number_unsigned_t*>())
      value = exact(*natural);
    else if (const auto* integer = json.get_ptr<const Json::number_integer_t*>())
      value = exact(*integer);
    else if (const auto* floating = json.get_ptr<const Json::number_float_t*>())
      value = exact(*floating, json);
    else
      throw std::runtime_error(std::string("JSON: expected a number, got ") + json.type_name());
  }

 private:
  static T exact(int64_t integer) {
    if constexpr (std::is_integral_v<T>) {
      if (integer < 0 ? !std::is_signed_v<T> || integer < static_cast<int64_t>(std::numeric_limits<T>::min())
                      : static_cast<uint64_t>(integer) > static_cast<uint64_t>(std::numeric_limits<T>::max()))
        throw_out_of_range(std::to_string(integer));
    }
    return static_cast<T>(integer);
  }

  static T exact(uint64_t natural) {
    if constexpr (std::is_integral_v<T>) {
      if (natural > static_cast<uint64_t>(std::numeric_limits<T>::max())) throw_out_of_range(std::to_string(natural));
    }
    return static_cast<T>(natural);
  }

  static T exact(double floating, const Json& json) {
    if constexpr (std::is_floating_point_v<T>) {
      return static_cast<T>(floating);
    } else {
      if (floating != std::trunc(floating) || std::fabs(floating) > 9007199254740992.0)  // 2^53
        throw std::runtime_error("JSON: expected an integer, got " + dump_json(json));
      return exact(static_cast<int64_t>(floating));
    }
  }

  [[noreturn]] static void throw_out_of_range(const std::string& integer) {
    throw std::runtime_error("JSON: integer " + integer + " is out of range [" +
                             std::to_string(std::numeric_limits<T>::min()) + ", " +
                             std::to_string(std::numeric_limits<T>::max()) + "]");
  }
};

}  // namespace ml
