#include "framework/io/json.h"

#include <charconv>
#include <cmath>
#include <regex>
#include <sstream>
#include <string>
#include <unordered_set>
#include <vector>

namespace ml {
namespace {

// Deep enough for any real document; keeps recursive walks of a parsed value (dump_json, a reader's
// own) from running off the stack on malicious input.
constexpr int kMaxDepth = 512;

// nlohmann's messages start with "[json.exception.<kind>.<id>] ", which says nothing to a reader.
std::string message_of(const Json::exception& error) { return without_json_error_ids(error.what()); }

// "line L, column C" of the last of the first `read` characters of `text` (nlohmann's convention).
std::string line_and_column(const std::string& text, size_t read) {
  size_t line = 1, column = 0;
  for (size_t i = 0; i < read && i < text.size(); ++i) {
    if (text[i] == '\n') {
      ++line;
      column = 0;
    } else {
      ++column;
    }
  }
  return "line " + std::to_string(line) + ", column " + std::to_string(column);
}

// Thrown while serializing; `path` grows as the exception unwinds through arrays and objects.
struct DumpError {
  std::string what;
  std::string path;
};

// Doubles that hold an integer print without fraction or exponent (975, 1e15 -> "1000000000000000"),
// as in every earlier muonlab file; everything else uses the shortest exact form.
std::string format_number(double value) {
  if (!std::isfinite(value)) return std::to_string(value);
  char buffer[32];
  bool integral = std::fabs(value) < 1e17 && value == std::trunc(value);
  auto result = integral ? std::to_chars(buffer, buffer + sizeof buffer, value, std::chars_format::fixed)
                         : std::to_chars(buffer, buffer + sizeof buffer, value);
  return std::string(buffer, result.ptr);
}

// Strings (escaped as before: \" \\ \b \f \n \r \t, other control characters as \u00XX), integers,
// booleans and null print as nlohmann prints them.
void append_scalar(std::string& out, const Json& value) {
  try {
    out += value.dump(-1, ' ', false, Json::error_handler_t::strict);
  } catch (const Json::type_error& error) {  // a string that is not valid UTF-8
    throw DumpError{message_of(error), ""};
  }
}

void append(std::string& out, const Json& value) {
  switch (value.type()) {
    case Json::value_t::number_float: {
      const double number = value.get<double>();
      if (!std::isfinite(number)) throw DumpError{"cannot serialize non-finite number " + format_number(number), ""};
      out += format_number(number);
      break;
    }
    case Json::value_t::array: {
      out += '[';
      size_t index = 0;
      for (const Json& element : value) {
        if (index) out += ',';
        try {
          append(out, element);
        } catch (DumpError& error) {
          error.path = "[" + std::to_string(index) + "]" + error.path;
          throw;
        }
        ++index;
      }
      out += ']';
      break;
    }
    case Json::value_t::object: {
      out += '{';
      bool first = true;
      for (const auto& [key, member] : value.items()) {
        if (!first) out += ',';
        first = false;
        try {
          append_scalar(out, Json(key));
          out += ':';
          append(out, member);
        } catch (DumpError& error) {
          error.path = "." + key + error.path;
          throw;
        }
      }
      out += '}';
      break;
    }
    default:
      append_scalar(out, value);
  }
}

}  // namespace

Json parse_json(const std::string& text) {
  // nlohmann's parser gives its callback no position: the stream's read position is how far it has read.
  std::istringstream input(text);
  const auto error_here = [&](const std::string& what) {
    const auto read = static_cast<size_t>(input.rdbuf()->pubseekoff(0, std::ios::cur, std::ios::in));
    return std::runtime_error("JSON parse error at " + line_and_column(text, read) + ": " + what);
  };
  std::vector<std::unordered_set<std::string>> keys_of_open_objects;
  const Json::parser_callback_t check = [&](int depth, Json::parse_event_t event, Json& parsed) {
    if (depth > kMaxDepth) throw error_here("nesting deeper than " + std::to_string(kMaxDepth) + " levels");
    switch (event) {
      case Json::parse_event_t::object_start:
        keys_of_open_objects.emplace_back();
        break;
      case Json::parse_event_t::object_end:
        keys_of_open_objects.pop_back();
        break;
      case Json::parse_event_t::key: {
        const std::string& key = parsed.get_ref<const std::string&>();
        if (!keys_of_open_objects.back().insert(key).second) throw error_here("duplicate key \"" + key + "\"");
        break;
      }
      case Json::parse_event_t::value:
        // nlohmann reads the token -0 as the signed integer 0 (a plain 0 is unsigned): it is the
        // negative zero that dump_json writes for -0.0, and it reads back as one.
        if (parsed.is_number_integer() && !parsed.is_number_unsigned() && parsed.get<int64_t>() == 0) parsed = -0.0;
        break;
      default:
        break;
    }
    return true;
  };
  try {
    return Json::parse(input, check);
  } catch (const Json::parse_error& error) {  // its message names line and column
    throw std::runtime_error("JSON " + message_of(error));
  } catch (const Json::exception& error) {  // a number beyond the range of doubles
    throw error_here(message_of(error));
  }
}

std::string dump_json(const Json& value) {
  std::string out;
  try {
    append(out, value);
  } catch (const DumpError& error) {
    throw std::runtime_error("JSON: " + error.what + " at $" + error.path);
  }
  return out;
}

std::string without_json_error_ids(const std::string& message) {
  static const std::regex error_id(R"(\[json\.exception\.[a-z_]+\.[0-9]+\] )");
  return std::regex_replace(message, error_id, "");
}

}  // namespace ml
