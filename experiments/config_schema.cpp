#include "experiments/config_schema.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <optional>
#include <sstream>

namespace ml::schema {
namespace {

bool starts_with_path(const std::vector<std::string>& path, const std::vector<std::string>& prefix) {
  return prefix.size() <= path.size() && std::equal(prefix.begin(), prefix.end(), path.begin());
}

std::optional<int64_t> parse_integer(const std::string& text) {
  static const std::regex integer_pattern("[+-]?[0-9]+");
  if (!std::regex_match(text, integer_pattern)) return std::nullopt;
  errno = 0;
  const long long value = std::strtoll(text.c_str(), nullptr, 10);
  if (errno == ERANGE) return std::nullopt;
  return value;
}

std::optional<double> parse_number(const std::string& text) {
  if (text.empty()) return std::nullopt;
  char* end = nullptr;
  const double value = std::strtod(text.c_str(), &end);
  if (*end != '\0' || !std::isfinite(value)) return std::nullopt;
  return value;
}

void write_plain(YAML::Emitter& out, int64_t value) { out << static_cast<long long>(value); }
void write_plain(YAML::Emitter& out, double value) { out << format_number(value); }
template <typename List>
void write_flow_list(YAML::Emitter& out, const List& values) {
  out << YAML::Flow << YAML::BeginSeq;
  for (const auto& value : values) write_plain(out, value);
  out << YAML::EndSeq;
}

}  // namespace

bool contains(const Kinds& kinds, const std::string& kind) {
  return std::find(kinds.begin(), kinds.end(), kind) != kinds.end();
}

std::string join_path(const std::string& section_path, const std::string& key) {
  return section_path.empty() ? key : section_path + "." + key;
}

std::vector<std::string> split_path(const std::string& path) {
  std::vector<std::string> parts;
  std::stringstream stream(path);
  for (std::string part; std::getline(stream, part, '.');) parts.push_back(part);
  return parts;
}

std::string join_words(const Kinds& words, const char* last_separator) {
  std::string text;
  for (size_t i = 0; i < words.size(); ++i) {
    if (i > 0) text += i + 1 == words.size() ? last_separator : ", ";
    text += words[i];
  }
  return text;
}

std::string Source::origin(const std::string& path, const YAML::Mark& mark) const {
  const std::vector<std::string> parts = split_path(path.substr(0, path.find('[')));
  const Override* culprit = nullptr;
  for (const Override& candidate : overrides_)
    if (starts_with_path(parts, candidate.path)) culprit = &candidate;
  if (!culprit && mark.is_null()) {
    size_t best_shared = 0;
    for (const Override& candidate : overrides_) {
      size_t shared = 0;
      while (shared < parts.size() && shared < candidate.path.size() && parts[shared] == candidate.path[shared])
        ++shared;
      if (shared > 0 && shared >= best_shared) {
        best_shared = shared;
        culprit = &candidate;
      }
    }
  }
  if (culprit) return "--set " + culprit->text;
  if (mark.is_null()) return name_;
  return name_ + ":" + std::to_string(mark.line + 1);
}

const RetiredKey* Source::retired(const std::string& key_path, const std::string& kind) const {
  for (const RetiredKey& key : retired_keys_)
    if (key.section + "." + key.key == key_path && contains(key.kinds, kind)) return &key;
  return nullptr;
}

YAML::Mark mark_of(const YAML::Node& node, const YAML::Mark& fallback) {
  return node.Mark().is_null() ? fallback : node.Mark();
}

std::string describe(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Null:
      return "nothing";
    case YAML::NodeType::Sequence:
      return "a list";
    case YAML::NodeType::Map:
      return "a mapping";
    case YAML::NodeType::Scalar: {
      // A long value (a whole file read as one string, say) is cut: the message is about its start.
      constexpr size_t kShown = 60;
      const std::string& text = node.Scalar();
      const std::string shown = text.size() > kShown ? text.substr(0, kShown) + "..." : text;
      return node.Tag() == "!" ? "\"" + shown + "\" (a quoted string)" : "\"" + shown + "\"";
    }
    case YAML::NodeType::Undefined:
      break;
  }
  return "an undefined value";
}

[[noreturn]] void fail_expected(const Site& site, const std::string& expectation, const YAML::Node& got) {
  site.fail("expected " + expectation + ", got " + describe(got));
}

bool is_plain_scalar(const YAML::Node& node) { return node.IsScalar() && node.Tag() != "!"; }

int64_t read_integer(const YAML::Node& node, const Site& site, const Bounds& bounds, const std::string& expectation) {
  const std::optional<int64_t> value = is_plain_scalar(node) ? parse_integer(node.Scalar()) : std::nullopt;
  if (!value || !bounds.contains(static_cast<double>(*value))) fail_expected(site, expectation, node);
  return *value;
}

double read_number(const YAML::Node& node, const Site& site, const Bounds& bounds, const std::string& expectation) {
  const std::optional<double> value = is_plain_scalar(node) ? parse_number(node.Scalar()) : std::nullopt;
  if (!value || !bounds.contains(*value)) fail_expected(site, expectation, node);
  return *value;
}

bool read_boolean(const YAML::Node& node, const Site& site) {
  if (is_plain_scalar(node)) {
    std::string text = node.Scalar();
    std::transform(text.begin(), text.end(), text.begin(), [](unsigned char c) { return std::tolower(c); });
    if (text == "true") return true;
    if (text == "false") return false;
  }
  fail_expected(site, "true or false", node);
}

std::string read_string(const YAML::Node& node, const Site& site, const std::regex& pattern,
                        const std::string& expectation) {
  if (!node.IsScalar() || !std::regex_match(node.Scalar(), pattern)) fail_expected(site, expectation, node);
  return node.Scalar();
}

std::vector<int64_t> read_integer_list(const YAML::Node& node, const Site& site, const Bounds& bounds,
                                       bool allow_empty, const std::string& expectation) {
  if (!node.IsSequence() || (!allow_empty && node.size() == 0)) fail_expected(site, expectation, node);
  std::vector<int64_t> values;
  for (size_t i = 0; i < node.size(); ++i) {
    const Site element{site.source, site.path + "[" + std::to_string(i) + "]", mark_of(node[i], site.mark)};
    values.push_back(read_integer(node[i], element, bounds, "an integer " + bounds.text()));
  }
  return values;
}

std::array<double, 2> read_number_pair(const YAML::Node& node, const Site& site, const Bounds& bounds,
                                       const std::string& expectation) {
  if (!node.IsSequence() || node.size() != 2) fail_expected(site, expectation, node);
  std::array<double, 2> values{};
  for (size_t i = 0; i < 2; ++i) {
    const Site element{site.source, site.path + "[" + std::to_string(i) + "]", mark_of(node[i], site.mark)};
    values[i] = read_number(node[i], element, bounds, "a number " + bounds.text());
  }
  return values;
}

void write_setting(YAML::Emitter& out, SettingType type, const SettingValue& value) {
  switch (type) {
    case SettingType::Integer: return write_plain(out, std::get<int64_t>(value));
    case SettingType::Number: return write_plain(out, std::get<double>(value));
    case SettingType::Boolean: out << std::get<bool>(value); return;
    case SettingType::Choice: out << std::get<std::string>(value); return;
    case SettingType::Text: out << YAML::DoubleQuoted << std::get<std::string>(value); return;
    case SettingType::IntegerList: return write_flow_list(out, std::get<std::vector<int64_t>>(value));
    case SettingType::NumberPair: return write_flow_list(out, std::get<std::array<double, 2>>(value));
  }
}

std::vector<Entry> entries_of(const YAML::Node& mapping, const Site& site) {
  std::vector<Entry> entries;
  for (auto it = mapping.begin(); it != mapping.end(); ++it) {
    const YAML::Mark key_mark = it->first.Mark();  // null for a key that an override added
    if (!it->first.IsScalar())
      Site{site.source, site.path, key_mark}.fail("keys must be plain names, got " + describe(it->first));
    const std::string key = it->first.Scalar();
    for (const Entry& earlier : entries)
      if (earlier.key == key)
        Site{site.source, join_path(site.path, key), key_mark}.fail(
            "duplicate key (first given on line " + std::to_string(earlier.key_mark.line + 1) + ")");
    entries.push_back({key, key_mark, it->second});
  }
  return entries;
}

}  // namespace ml::schema
