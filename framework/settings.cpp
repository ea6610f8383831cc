#include "framework/settings.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>

namespace ml {

std::string format_number(double value) {
  char buffer[32];
  // Whole numbers read best without an exponent ("20", not "2e+01").
  if (value == std::floor(value) && std::fabs(value) < 1e15) {
    std::snprintf(buffer, sizeof buffer, "%.0f", value);
    return buffer;
  }
  for (int precision = 1; precision <= 17; ++precision) {
    std::snprintf(buffer, sizeof buffer, "%.*g", precision, value);
    if (std::strtod(buffer, nullptr) == value) break;
  }
  return buffer;
}

bool Bounds::contains(double value) const {
  if (low && (low_inclusive ? value < *low : value <= *low)) return false;
  if (high && (high_inclusive ? value > *high : value >= *high)) return false;
  return true;
}

std::string Bounds::text() const {
  if (low && high)
    return "in " + std::string(low_inclusive ? "[" : "(") + format_number(*low) + ", " + format_number(*high) +
           (high_inclusive ? "]" : ")");
  if (low) return (low_inclusive ? ">= " : "> ") + format_number(*low);
  if (high) return (high_inclusive ? "<= " : "< ") + format_number(*high);
  return "";
}

Bounds at_least(double low) { return {low, std::nullopt, true, true}; }
Bounds greater_than(double low) { return {low, std::nullopt, false, true}; }
Bounds closed(double low, double high) { return {low, high, true, true}; }
Bounds closed_open(double low, double high) { return {low, high, true, false}; }
Bounds open_closed(double low, double high) { return {low, high, false, true}; }

}  // namespace ml
