// Reading a YAML file of muonlab's own (sweep and study files) with errors that name the file,
// the line and the key: "sweep.yaml:7: runs[0].grid.optimizer.lr: expected a non-empty list".
#pragma once
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cstdio>
#include <regex>
#include <string>
#include <utility>
#include <vector>

#include "experiments/config.h"

namespace ml {

class YamlFileReader {
 public:
  explicit YamlFileReader(std::string source) : source_(std::move(source)) {}

  YAML::Node load(const std::string& yaml_text) const {
    check_text(yaml_text);
    try {
      return YAML::Load(yaml_text);
    } catch (const YAML::ParserException& error) {
      throw ConfigError(source_ + ":" + std::to_string(error.mark.line + 1) + ": malformed YAML: " + error.msg);
    }
  }

  // A binary file (an image, a checkpoint) given where YAML belongs: say so at the first byte that
  // text cannot hold, rather than let the YAML parser quote the bytes back.
  void check_text(const std::string& text) const {
    size_t line = 1;
    for (size_t i = 0; i < text.size();) {
      const auto byte = static_cast<unsigned char>(text[i]);
      const size_t length = utf8_sequence_length(text, i);
      if (length == 0 || (byte < 0x20 && byte != '\t' && byte != '\n' && byte != '\r') || byte == 0x7f) {
        char description[64];
        std::snprintf(description, sizeof description, "byte 0x%02x at offset %zu", byte, i);
        throw ConfigError(source_ + ":" + std::to_string(line) + ": not a YAML text file (" + description +
                          " is not UTF-8 text)");
      }
      if (byte == '\n') ++line;
      i += length;
    }
  }

  [[noreturn]] void fail(const YAML::Node& node, const std::string& key, const std::string& message) const {
    std::string origin = source_;
    if (!node.Mark().is_null()) origin += ":" + std::to_string(node.Mark().line + 1);
    throw ConfigError(origin + ": " + (key.empty() ? "" : key + ": ") + message);
  }

  // Rejects keys outside `allowed`, with a did-you-mean hint.
  void check_keys(const YAML::Node& mapping, const std::string& where, const std::vector<std::string>& allowed) const {
    if (!mapping.IsMap()) fail(mapping, where, "expected a mapping of keys");
    for (const auto& entry : mapping) {
      const std::string key = entry.first.Scalar();
      if (std::find(allowed.begin(), allowed.end(), key) != allowed.end()) continue;
      const std::string hint = closest_match(key, allowed);
      std::string expected;
      for (const std::string& name : allowed) expected += (expected.empty() ? "" : ", ") + name;
      fail(entry.first, where.empty() ? key : where + "." + key,
           "unknown key" + (hint.empty() ? "" : " (did you mean " + hint + "?)") + "; expected one of " + expected);
    }
  }

  std::string text(const YAML::Node& node, const std::string& key, const std::string& pattern,
                   const std::string& expectation) const {
    if (!node.IsScalar() || !std::regex_match(node.Scalar(), std::regex(pattern)))
      fail(node, key, "expected " + expectation);
    return node.Scalar();
  }

  // `set:` as dotted keys and YAML values: a nested mapping is flattened ({train: {steps: 5}} is
  // train.steps=5); lists and scalars are values.
  void flatten(const YAML::Node& node, const std::string& prefix, std::vector<std::string>& overrides) const {
    if (!node.IsMap()) fail(node, prefix, "expected a mapping of config keys to values");
    for (const auto& entry : node) {
      const std::string key = prefix.empty() ? entry.first.Scalar() : prefix + "." + entry.first.Scalar();
      if (entry.second.IsMap())
        flatten(entry.second, key, overrides);
      else
        overrides.push_back(key + "=" + yaml_text(entry.second));
    }
  }

  std::vector<std::pair<std::string, std::vector<YAML::Node>>> grid(const YAML::Node& node,
                                                                     const std::string& where) const {
    std::vector<std::pair<std::string, std::vector<YAML::Node>>> axes;
    if (!node.IsDefined() || node.IsNull()) return axes;
    if (!node.IsMap()) fail(node, where, "expected a mapping of config keys to lists of values");
    for (const auto& entry : node) {
      const std::string key = where + "." + entry.first.Scalar();
      if (!entry.second.IsSequence() || entry.second.size() == 0)
        fail(entry.second, key, "expected a non-empty list of values to try");
      std::vector<YAML::Node> values(entry.second.begin(), entry.second.end());
      axes.emplace_back(entry.first.Scalar(), values);
    }
    return axes;
  }

  static std::string yaml_text(const YAML::Node& node) {
    YAML::Emitter out;
    out << YAML::Flow << node;
    return out.c_str();
  }

  const std::string& source() const { return source_; }

 private:
  // The length of the well-formed UTF-8 sequence at `i` (1 to 4), or 0 when it is not one.
  static size_t utf8_sequence_length(const std::string& text, size_t i) {
    const auto lead = static_cast<unsigned char>(text[i]);
    if (lead < 0x80) return 1;
    const size_t length = lead >= 0xc2 && lead <= 0xdf ? 2 : lead >= 0xe0 && lead <= 0xef ? 3 : lead >= 0xf0 && lead <= 0xf4 ? 4 : 0;
    if (length == 0 || i + length > text.size()) return 0;
    for (size_t k = 1; k < length; ++k)
      if ((static_cast<unsigned char>(text[i + k]) & 0xc0) != 0x80) return 0;
    return length;
  }

  std::string source_;
};

}  // namespace ml
