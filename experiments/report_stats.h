// The statistics `muonlab report` prints: summaries of one quantity over the seeds of a
// configuration, and how numbers are written in its tables.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

namespace ml {

struct Stats {
  int n = 0;  // values that are not NaN (missing values are NaN and are left out)
  double mean = std::nan(""), std = std::nan(""), min = std::nan(""), max = std::nan("");

  // Mean, sample standard deviation (n - 1 in the denominator; 0 for a single value), min, max.
  static Stats of(const std::vector<double>& values) {
    Stats stats;
    double sum = 0.0;
    for (double value : values) {
      if (std::isnan(value)) continue;
      sum += value;
      stats.min = stats.n == 0 ? value : std::min(stats.min, value);
      stats.max = stats.n == 0 ? value : std::max(stats.max, value);
      ++stats.n;
    }
    if (stats.n == 0) return stats;
    stats.mean = sum / stats.n;
    double squares = 0.0;
    for (double value : values)
      if (!std::isnan(value)) squares += (value - stats.mean) * (value - stats.mean);
    stats.std = stats.n > 1 ? std::sqrt(squares / (stats.n - 1)) : 0.0;
    return stats;
  }
};

// `value` with `decimals` digits after the point; "-" for NaN.
inline std::string format_value(double value, int decimals) {
  if (std::isnan(value)) return "-";
  char text[64];
  std::snprintf(text, sizeof text, "%.*f", decimals, value);
  return text;
}

// Up to four significant digits, for learning rates and targets ("0.0005", "0.02", "1.6").
inline std::string format_general(double value) {
  if (std::isnan(value)) return "-";
  char text[64];
  std::snprintf(text, sizeof text, "%.4g", value);
  return text;
}

// Ten significant digits, for machine-read files (report.csv); "" for NaN.
inline std::string format_precise(double value) {
  if (std::isnan(value)) return "";
  char text[64];
  std::snprintf(text, sizeof text, "%.10g", value);
  return text;
}

}  // namespace ml
