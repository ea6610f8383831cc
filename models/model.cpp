#include "models/model.h"

#include <cstdio>

namespace ml {

std::string format_count(int64_t count) {
  char text[32];
  if (count >= 1000000)
    std::snprintf(text, sizeof text, "%.2fM", static_cast<double>(count) / 1e6);
  else if (count >= 1000)
    std::snprintf(text, sizeof text, "%.1fK", static_cast<double>(count) / 1e3);
  else
    std::snprintf(text, sizeof text, "%lld", static_cast<long long>(count));
  return text;
}

}  // namespace ml
