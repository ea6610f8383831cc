// Settings declared beside the code that reads them.
//
// An optimizer (optimizers/*.h) or a model (models/*.h) keeps its settings in a plain struct and
// lists them in a table of Setting rows: the key a config file gives, the member it fills, its
// range or choices, its default (or kRequired) and one line on what it means. The config reader
// (experiments/config.cpp) builds its YAML schema from these tables, so the code, its defaults and
// the checks on its inputs cannot drift apart, and a struct has no member for a key its kind does
// not use. A choice is an enum in the struct: its names exist only in its table, and code past the
// config reader switches on the enum instead of comparing strings.
#pragma once
#include <algorithm>
#include <array>
#include <cstdint>
#include <functional>
#include <optional>
#include <stdexcept>
#include <type_traits>
#include <string>
#include <utility>
#include <variant>
#include <vector>

namespace ml {

// The shortest decimal text that reads back as exactly `value` ("20", not "2e+01").
std::string format_number(double value);

// Where a number may lie: either end closed, open or absent.
struct Bounds {
  std::optional<double> low, high;
  bool low_inclusive = true, high_inclusive = true;

  bool contains(double value) const;
  std::string text() const;  // "in [0, 1)", "> 0", "" when unbounded
};

Bounds at_least(double low);
Bounds greater_than(double low);
Bounds closed(double low, double high);
Bounds closed_open(double low, double high);
Bounds open_closed(double low, double high);

// An enum's values with the names a config file writes for them.
template <typename E>
using EnumNames = std::vector<std::pair<E, std::string>>;

template <typename E>
const std::string& name_of(const EnumNames<E>& names, E value) {
  for (const auto& [candidate, name] : names)
    if (candidate == value) return name;
  throw std::logic_error("an enum value without a name");
}

template <typename E>
E value_named(const EnumNames<E>& names, const std::string& name) {
  for (const auto& [value, candidate] : names)
    if (candidate == name) return value;
  throw std::invalid_argument("unknown name '" + name + "'");
}

// A setting's value as the config reader handles it; a choice travels as its name.
using SettingValue =
    std::variant<int64_t, double, bool, std::string, std::vector<int64_t>, std::array<double, 2>>;

enum class SettingType { Integer, Number, Boolean, Choice, Text, IntegerList, NumberPair };

struct Required {};
constexpr Required kRequired;

// A setting's default value, or kRequired.
template <typename T>
struct Default {
  std::optional<T> value;
  Default(Required) {}  // NOLINT: implicit so rows can say kRequired
  template <typename U, std::enable_if_t<std::is_convertible_v<U, T>, int> = 0>
  Default(U&& given) : value(T(std::forward<U>(given))) {}  // NOLINT: implicit so rows can say 0.1
};

// One setting of a struct S.
template <typename S>
struct Setting {
  std::string key;
  SettingType type = SettingType::Number;
  std::string meaning;               // one line, for readers of the table
  Bounds bounds;                     // of a number, an integer, or each element of a list
  std::vector<std::string> choices;  // Choice: the names it accepts
  std::string pattern;               // Text: a regular expression the whole value matches
  std::string expectation;           // Text: what the pattern means, for messages
  bool allow_empty = false;          // IntegerList
  std::optional<SettingValue> fallback;  // the default; none: the key is required
  std::function<void(S&, const SettingValue&)> set;
  std::function<SettingValue(const S&)> get;
};

template <typename S>
using SettingList = std::vector<Setting<S>>;

namespace detail {

// T in a parameter that template argument deduction skips (C++20's std::type_identity_t).
template <typename T>
struct Identity {
  using type = T;
};
template <typename T>
using Exactly = typename Identity<T>::type;

template <typename S, typename T>
Setting<S> plain(std::string key, SettingType type, T S::*member, const Default<T>& fallback, std::string meaning) {
  Setting<S> setting;
  setting.key = std::move(key);
  setting.type = type;
  setting.meaning = std::move(meaning);
  if (fallback.value) setting.fallback = SettingValue(*fallback.value);
  setting.set = [member](S& s, const SettingValue& value) { s.*member = std::get<T>(value); };
  setting.get = [member](const S& s) { return SettingValue(s.*member); };
  return setting;
}

}  // namespace detail

// The rows of a table. Each names its struct explicitly (integer<S>(...)) when the member belongs
// to a base struct shared by several settings structs.
template <typename S>
Setting<S> integer(std::string key, int64_t S::*member, Bounds bounds, Default<int64_t> fallback,
                   std::string meaning = "") {
  Setting<S> setting = detail::plain(std::move(key), SettingType::Integer, member, fallback, std::move(meaning));
  setting.bounds = bounds;
  return setting;
}

template <typename S>
Setting<S> number(std::string key, double S::*member, Bounds bounds, Default<double> fallback, std::string meaning = "") {
  Setting<S> setting = detail::plain(std::move(key), SettingType::Number, member, fallback, std::move(meaning));
  setting.bounds = bounds;
  return setting;
}

template <typename S>
Setting<S> boolean(std::string key, bool S::*member, Default<bool> fallback, std::string meaning = "") {
  return detail::plain(std::move(key), SettingType::Boolean, member, fallback, std::move(meaning));
}

// One of the names in `names` (a table that lives as long as the program: a function's static).
template <typename S, typename E>
Setting<S> choice(std::string key, E S::*member, const EnumNames<E>& names, Default<detail::Exactly<E>> fallback,
                  std::string meaning = "") {
  Setting<S> setting;
  setting.key = std::move(key);
  setting.type = SettingType::Choice;
  setting.meaning = std::move(meaning);
  for (const auto& entry : names) setting.choices.push_back(entry.second);
  if (fallback.value) setting.fallback = name_of(names, *fallback.value);
  setting.set = [member, &names](S& s, const SettingValue& value) {
    s.*member = value_named(names, std::get<std::string>(value));
  };
  setting.get = [member, &names](const S& s) { return SettingValue(name_of(names, s.*member)); };
  return setting;
}

// Free text matching `pattern`; `expectation` says what that means ("a non-empty path").
template <typename S>
Setting<S> text(std::string key, std::string S::*member, std::string pattern, std::string expectation,
                Default<std::string> fallback, std::string meaning = "") {
  Setting<S> setting = detail::plain(std::move(key), SettingType::Text, member, fallback, std::move(meaning));
  setting.pattern = std::move(pattern);
  setting.expectation = std::move(expectation);
  return setting;
}

template <typename S>
Setting<S> integer_list(std::string key, std::vector<int64_t> S::*member, Bounds bounds, bool allow_empty,
                        Default<std::vector<int64_t>> fallback, std::string meaning = "") {
  Setting<S> setting = detail::plain(std::move(key), SettingType::IntegerList, member, fallback, std::move(meaning));
  setting.bounds = bounds;
  setting.allow_empty = allow_empty;
  return setting;
}

template <typename S>
Setting<S> number_pair(std::string key, std::array<double, 2> S::*member, Bounds bounds,
                       Default<std::array<double, 2>> fallback, std::string meaning = "") {
  Setting<S> setting = detail::plain(std::move(key), SettingType::NumberPair, member, fallback, std::move(meaning));
  setting.bounds = bounds;
  return setting;
}

// A struct with every default of `settings` filled in (required ones keep their member's own
// initial value), for code that builds an optimizer or a model without a config file.
template <typename S>
S with_defaults(const SettingList<S>& settings) {
  S values{};
  for (const Setting<S>& setting : settings)
    if (setting.fallback) setting.set(values, *setting.fallback);
  return values;
}

// `settings` with some defaults replaced, by key: a component used in another role (AdamW for a
// Muon-family optimizer's non-matrix parameters) that has other defaults there. A replaced
// default makes a required key optional.
using OtherDefaults = std::vector<std::pair<std::string, SettingValue>>;  // (key, default)
template <typename S>
SettingList<S> with_other_defaults(SettingList<S> settings, const OtherDefaults& defaults) {
  for (const auto& [key, value] : defaults) {
    const auto row = std::find_if(settings.begin(), settings.end(), [&](const Setting<S>& s) { return s.key == key; });
    if (row == settings.end()) throw std::logic_error("no setting '" + key + "' to give another default");
    row->fallback = value;
  }
  return settings;
}

// ------------------------------------------------------------------ kinds
// A component with several kinds (the optimizers, the models) is a std::variant of settings
// structs, one per kind, each naming itself (`static constexpr const char* kind`) and listing its
// settings (`static const SettingList<S>& settings()`).

namespace detail {
template <typename F, size_t... I>
void for_each_index(F& f, std::index_sequence<I...>) {
  (f(std::integral_constant<size_t, I>()), ...);
}
}  // namespace detail

// Calls f(std::integral_constant<size_t, I>()) for each alternative I of the variant V, in order.
template <typename V, typename F>
void for_each_kind(F&& f) {
  detail::for_each_index(f, std::make_index_sequence<std::variant_size_v<V>>());
}

template <typename V>
std::vector<std::string> kind_names() {
  std::vector<std::string> names;
  for_each_kind<V>([&](auto index) { names.push_back(std::variant_alternative_t<decltype(index)::value, V>::kind); });
  return names;
}

template <typename V>
std::string kind_of(const V& settings) {
  return std::visit([](const auto& s) { return std::string(s.kind); }, settings);
}

// The settings of the kind named `name` with every default of its table filled in; nullopt
// when no kind has that name.
template <typename V>
std::optional<V> kind_with_defaults(const std::string& name) {
  std::optional<V> found;
  for_each_kind<V>([&](auto index) {
    using S = std::variant_alternative_t<decltype(index)::value, V>;
    if (name == S::kind) found.emplace(std::in_place_index<decltype(index)::value>, with_defaults(S::settings()));
  });
  return found;
}

}  // namespace ml
