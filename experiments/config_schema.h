// The schema engine behind muonlab's config files: a YAML mapping is read into a C++ struct by a
// Section, a list of rows (Field) that each know one key: which kinds of the section it applies
// to, how to read and check its value, its default, how to write it back and compare it. Most rows
// are a Setting (framework/settings.h) declared beside the code that uses it; a nested section is a
// row too. Every error names where the value came from: "file.yaml:12: optimizer.lr: expected a
// number > 0, got \"fast\"", or the --set override that wrote it.
// muonlab's own tables (data, model, optimizer, schedule, train) are in experiments/config.cpp.
#pragma once
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <array>
#include <functional>
#include <memory>
#include <regex>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "experiments/config.h"
#include "framework/settings.h"

namespace ml::schema {

using Kinds = std::vector<std::string>;

bool contains(const Kinds& kinds, const std::string& kind);
std::string join_path(const std::string& section_path, const std::string& key);  // "a" + "b" -> "a.b"
std::vector<std::string> split_path(const std::string& path);                    // "a.b" -> {"a", "b"}
// "a", "a or b", "a, b or c" (or with `last_separator` ", ": "a, b, c")
std::string join_words(const Kinds& words, const char* last_separator = " or ");

// A key that some kinds of a section once accepted although nothing read it: a config that sets
// it now is refused, and the message says `why`.
struct RetiredKey {
  std::string section;  // "optimizer"
  std::string key;      // "momentum"
  Kinds kinds;          // the values of the section's kind that used to accept it
  std::string why;
};

// ------------------------------------------------------------------ where a value came from

struct Override {
  std::vector<std::string> path;
  std::string text;  // as given to --set
};

// The document being read: its name, the --set overrides applied to it and the keys it may
// still hold from earlier versions.
class Source {
 public:
  Source(std::string name, std::vector<Override> overrides, const std::vector<RetiredKey>& retired_keys)
      : name_(std::move(name)), overrides_(std::move(overrides)), retired_keys_(retired_keys) {}

  [[noreturn]] void fail(const std::string& path, const YAML::Mark& mark, const std::string& message) const {
    throw ConfigError(origin(path, mark) + ": " + message);
  }

  const std::string& name() const { return name_; }

  // "file.yaml:12", or "--set optimizer.lr=3" for a key below an override's path. A node without
  // a mark was created by an override that reached through a missing section: blame the override
  // sharing the most leading keys with `path`.
  std::string origin(const std::string& path, const YAML::Mark& mark) const;

  // The retired key at `key_path` for a section of kind `kind`, or null.
  const RetiredKey* retired(const std::string& key_path, const std::string& kind) const;

 private:
  std::string name_;
  std::vector<Override> overrides_;
  const std::vector<RetiredKey>& retired_keys_;
};

// One key of the config being read.
struct Site {
  const Source& source;
  std::string path;  // full key path, e.g. "optimizer.lr"; "" for the whole document
  YAML::Mark mark;

  // "<origin>: <path>: <what>"
  [[noreturn]] void fail(const std::string& what) const {
    source.fail(path, mark, path.empty() ? what : path + ": " + what);
  }
  // "<origin>: <sentence>" for messages that name the key themselves.
  [[noreturn]] void fail_sentence(const std::string& sentence) const { source.fail(path, mark, sentence); }
};

YAML::Mark mark_of(const YAML::Node& node, const YAML::Mark& fallback);

// ------------------------------------------------------------------ reading scalar values

// What a node holds, for messages: "nothing", "a list", "\"fast\" (a quoted string)".
std::string describe(const YAML::Node& node);
[[noreturn]] void fail_expected(const Site& site, const std::string& expectation, const YAML::Node& got);
// Numbers and booleans must be plain scalars: `lr: "1e-3"` is a string, and saying so beats
// guessing what was meant.
bool is_plain_scalar(const YAML::Node& node);
int64_t read_integer(const YAML::Node& node, const Site& site, const Bounds& bounds, const std::string& expectation);
double read_number(const YAML::Node& node, const Site& site, const Bounds& bounds, const std::string& expectation);
bool read_boolean(const YAML::Node& node, const Site& site);
std::string read_string(const YAML::Node& node, const Site& site, const std::regex& pattern,
                        const std::string& expectation);
std::vector<int64_t> read_integer_list(const YAML::Node& node, const Site& site, const Bounds& bounds,
                                       bool allow_empty, const std::string& expectation);
std::array<double, 2> read_number_pair(const YAML::Node& node, const Site& site, const Bounds& bounds,
                                       const std::string& expectation);

// ------------------------------------------------------------------ the schema machinery

// One row of a section's schema: a key, the kinds it applies to and how to read, default,
// write and compare the value behind it. Most rows are a Setting (framework/settings.h) of the
// section's struct or of one kind's struct; a nested section is a row too.
template <typename S>
struct Field {
  std::string key;
  Kinds kinds;  // empty: every kind of the section
  bool required = false;
  std::string expectation;  // "a number > 0", for messages
  std::function<void(S&, const YAML::Node&, const Site&)> read;
  std::function<void(S&, const Site&)> fill_default;  // unset when required
  std::function<void(const S&, YAML::Emitter&)> write_value;
  std::function<bool(const S&, const S&)> equal;

  Field() = default;
  Field(Setting<S> setting);  // NOLINT: implicit so a table's rows can be plain settings

  bool applies_to(const std::string& kind) const { return kinds.empty() || contains(kinds, kind); }
};

template <typename S>
Field<S> only_for(Kinds kinds, Field<S> field) {
  field.kinds = std::move(kinds);
  return field;
}
template <typename S>
Field<S> only_for(Kinds kinds, Setting<S> setting) {
  return only_for(std::move(kinds), Field<S>(std::move(setting)));
}

// What a setting's value must be, for messages.
template <typename S>
std::string expectation_of(const Setting<S>& setting) {
  switch (setting.type) {
    case SettingType::Integer: return "an integer " + setting.bounds.text();
    case SettingType::Number: return "a number " + setting.bounds.text();
    case SettingType::Boolean: return "true or false";
    case SettingType::Choice: return "one of " + join_words(setting.choices);
    case SettingType::Text: return setting.expectation;
    case SettingType::IntegerList:
      return std::string(setting.allow_empty ? "a list" : "a non-empty list") + " of integers " + setting.bounds.text();
    case SettingType::NumberPair: return "a list of two numbers " + setting.bounds.text();
  }
  return "";
}

template <typename S>
SettingValue read_setting(const Setting<S>& setting, const std::regex& pattern, const std::string& expectation,
                          const YAML::Node& node, const Site& site) {
  switch (setting.type) {
    case SettingType::Integer: return read_integer(node, site, setting.bounds, expectation);
    case SettingType::Number: return read_number(node, site, setting.bounds, expectation);
    case SettingType::Boolean: return read_boolean(node, site);
    case SettingType::Choice:
      if (!is_plain_scalar(node) || !contains(setting.choices, node.Scalar())) {
        const std::string hint = node.IsScalar() ? closest_match(node.Scalar(), setting.choices) : "";
        site.fail("expected " + expectation + ", got " + describe(node) +
                  (hint.empty() ? "" : " (did you mean " + hint + "?)"));
      }
      return node.Scalar();
    case SettingType::Text: return read_string(node, site, pattern, expectation);
    case SettingType::IntegerList:
      return read_integer_list(node, site, setting.bounds, setting.allow_empty, expectation);
    case SettingType::NumberPair: return read_number_pair(node, site, setting.bounds, expectation);
  }
  throw std::logic_error("a setting of an unknown type");
}

void write_setting(YAML::Emitter& out, SettingType type, const SettingValue& value);

// The row of a setting of the struct Inner that `access` finds in the section's struct S (a
// pointer; null when S holds another kind's struct).
template <typename S, typename Inner, typename Access>
Field<S> field_of(Setting<Inner> setting, Access access) {
  Field<S> field;
  field.key = setting.key;
  field.required = !setting.fallback;
  field.expectation = expectation_of(setting);
  const auto row = std::make_shared<const Setting<Inner>>(std::move(setting));
  const auto pattern = std::make_shared<const std::regex>(row->pattern);
  field.read = [row, pattern, access, expectation = field.expectation](S& section, const YAML::Node& node,
                                                                       const Site& site) {
    row->set(*access(section), read_setting(*row, *pattern, expectation, node, site));
  };
  if (!field.required)
    field.fill_default = [row, access](S& section, const Site&) { row->set(*access(section), *row->fallback); };
  field.write_value = [row, access](const S& section, YAML::Emitter& out) {
    write_setting(out, row->type, row->get(*access(section)));
  };
  field.equal = [row, access](const S& a, const S& b) {
    const Inner* x = access(a);
    const Inner* y = access(b);
    if (!x || !y) return !x && !y;
    return row->get(*x) == row->get(*y);
  };
  return field;
}

template <typename S>
Field<S>::Field(Setting<S> setting) : Field(field_of<S>(std::move(setting), [](auto& section) { return &section; })) {}

template <typename S>
Setting<S> path(std::string key, std::string S::*member, Default<std::string> fallback) {
  return text(std::move(key), member, ".+", "a non-empty path", std::move(fallback), "");
}

template <typename S>
Setting<S> optional_path(std::string key, std::string S::*member) {
  return text(std::move(key), member, ".*", "a path (\"\" for none)", "", "");
}

// The keys of one mapping in file order, checked for non-name keys and duplicates.
struct Entry {
  std::string key;
  YAML::Mark key_mark;
  YAML::Node value;
};

std::vector<Entry> entries_of(const YAML::Node& mapping, const Site& site);

// What cross-field checks of a section see: the section's keys and where each was written.
struct SectionSites {
  const Site& section;
  const std::vector<Entry>& entries;

  Site at(const std::string& key) const {
    for (const Entry& entry : entries)
      if (entry.key == key) return {section.source, join_path(section.path, key), entry.key_mark};
    return {section.source, join_path(section.path, key), section.mark};
  }
};

template <typename S>
struct Section {
  std::function<std::string(const S&)> kind;  // the section's kind, if it has one
  std::vector<Field<S>> fields;
  std::function<void(const S&, const SectionSites&)> check;  // rules that involve several keys

  void read(S& section, const YAML::Node& node, const Site& site) const {
    if (!node.IsNull() && !node.IsMap()) fail_expected(site, "a mapping of keys", node);
    const Site here{site.source, site.path, mark_of(node, site.mark)};
    const std::vector<Entry> entries = node.IsMap() ? entries_of(node, here) : std::vector<Entry>{};
    const SectionSites sites{here, entries};

    // The kind decides which other keys exist, so it is read first.
    std::string current_kind;
    if (kind) {
      read_entry(section, "kind", "", entries, sites);
      current_kind = kind(section);
    }
    for (const Entry& entry : entries)
      if (!(kind && entry.key == "kind")) read_entry(section, entry.key, current_kind, entries, sites);
    for (const Field<S>& field : fields) {
      if (!field.applies_to(current_kind) || has_key(entries, field.key)) continue;
      if (field.required)
        sites.at(field.key).fail("required key is missing (expected " + field.expectation + ")");
      field.fill_default(section, sites.at(field.key));
    }
    if (check) check(section, sites);
  }

  void write(const S& section, YAML::Emitter& out) const {
    const std::string current_kind = kind ? kind(section) : "";
    out << YAML::BeginMap;
    for (const Field<S>& field : fields) {
      if (!field.applies_to(current_kind)) continue;
      out << YAML::Key << field.key << YAML::Value;
      field.write_value(section, out);
    }
    out << YAML::EndMap;
  }

  bool equal(const S& a, const S& b) const {
    return std::all_of(fields.begin(), fields.end(), [&](const Field<S>& field) { return field.equal(a, b); });
  }

 private:
  static bool has_key(const std::vector<Entry>& entries, const std::string& key) {
    return std::any_of(entries.begin(), entries.end(), [&](const Entry& entry) { return entry.key == key; });
  }

  void read_entry(S& section, const std::string& key, const std::string& current_kind,
                  const std::vector<Entry>& entries, const SectionSites& sites) const {
    const Site key_site = sites.at(key);
    Kinds kinds_with_key;
    for (const Field<S>& field : fields) {
      if (field.key != key) continue;
      if (field.applies_to(current_kind)) {
        for (const Entry& entry : entries)
          if (entry.key == key)
            // An empty value's mark points past the key's line.
            return field.read(section, entry.value,
                              {key_site.source, key_site.path,
                               entry.value.IsNull() ? key_site.mark : mark_of(entry.value, key_site.mark)});
        if (field.required) key_site.fail("required key is missing (expected " + field.expectation + ")");
        return field.fill_default(section, key_site);
      }
      for (const std::string& kind_name : field.kinds)
        if (!contains(kinds_with_key, kind_name)) kinds_with_key.push_back(kind_name);
    }
    if (!kinds_with_key.empty()) {
      const RetiredKey* retired = key_site.source.retired(key_site.path, current_kind);
      key_site.fail_sentence(key_site.path + " is only valid for kind " + join_words(kinds_with_key) + ", not " +
                             current_kind + (retired ? " (" + retired->why + ")" : ""));
    }
    Kinds valid_keys;
    for (const Field<S>& field : fields)
      if (field.applies_to(current_kind) && !contains(valid_keys, field.key)) valid_keys.push_back(field.key);
    Kinds all_keys;
    for (const Field<S>& field : fields)
      if (!contains(all_keys, field.key)) all_keys.push_back(field.key);
    const std::string hint = closest_match(key, all_keys);
    if (!hint.empty()) key_site.fail("unknown key; did you mean " + join_path(sites.section.path, hint) + "?");
    key_site.fail("unknown key; valid keys" + (current_kind.empty() ? "" : " for kind " + current_kind) + ": " +
                  join_words(valid_keys, ", "));
  }
};

// A nested section: the struct Sub that `access` finds in S (as a pointer).
template <typename S, typename Sub, typename Access>
Field<S> section(std::string key, Access access, const Section<Sub>& schema, bool required) {
  Field<S> field;
  field.key = key;
  field.required = required;
  field.expectation = "a mapping of " + key + " settings";
  field.read = [access, &schema](S& parent, const YAML::Node& node, const Site& site) {
    schema.read(*access(parent), node, site);
  };
  if (!required)
    field.fill_default = [access, &schema](S& parent, const Site& site) {
      schema.read(*access(parent), YAML::Node(), site);
    };
  field.write_value = [access, &schema](const S& parent, YAML::Emitter& out) { schema.write(*access(parent), out); };
  field.equal = [access, &schema](const S& a, const S& b) {
    const Sub* x = access(a);
    const Sub* y = access(b);
    if (!x || !y) return !x && !y;
    return schema.equal(*x, *y);
  };
  return field;
}

template <typename S, typename Sub>
Field<S> section(std::string key, Sub S::*member, const Section<Sub>& schema, bool required) {
  return section<S, Sub>(
      std::move(key), [member](auto& parent) { return &(parent.*member); }, schema, required);
}

template <typename T>
struct KindTag {
  using type = T;
};

// The rows of a section whose `kind` picks one struct of the std::variant V (framework/settings.h):
// the kind, then each kind's settings, which `table_of(KindTag<S>())` gives, valid for that kind
// alone. `extra_rows(KindTag<S>(), access)` adds rows that are not settings.
template <typename V, typename TableOf, typename ExtraRows>
std::vector<Field<V>> kind_fields(bool kind_required, TableOf table_of, ExtraRows extra_rows) {
  std::vector<Field<V>> fields;
  Field<V> kind;
  kind.key = "kind";
  kind.required = kind_required;
  const Kinds names = kind_names<V>();
  kind.expectation = "one of " + join_words(names);
  kind.read = [names, expectation = kind.expectation](V& settings, const YAML::Node& node, const Site& site) {
    if (!is_plain_scalar(node) || !contains(names, node.Scalar())) {
      const std::string hint = node.IsScalar() ? closest_match(node.Scalar(), names) : "";
      site.fail("expected " + expectation + ", got " + describe(node) +
                (hint.empty() ? "" : " (did you mean " + hint + "?)"));
    }
    for_each_kind<V>([&](auto index) {
      if (node.Scalar() == std::variant_alternative_t<decltype(index)::value, V>::kind)
        settings.template emplace<decltype(index)::value>();
    });
  };
  if (!kind_required) kind.fill_default = [](V& settings, const Site&) { settings = V(); };
  kind.write_value = [](const V& settings, YAML::Emitter& out) { out << kind_of(settings); };
  kind.equal = [](const V& a, const V& b) { return a.index() == b.index(); };
  fields.push_back(std::move(kind));
  for_each_kind<V>([&](auto index) {
    using S = std::variant_alternative_t<decltype(index)::value, V>;
    const auto access = [](auto& settings) { return std::get_if<decltype(index)::value>(&settings); };
    for (Setting<S> setting : table_of(KindTag<S>()))
      fields.push_back(only_for({S::kind}, field_of<V>(std::move(setting), access)));
    for (Field<V> field : extra_rows(KindTag<S>(), access)) fields.push_back(only_for({S::kind}, field));
  });
  return fields;
}

}  // namespace ml::schema
