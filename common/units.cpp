#include "common/units.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <string>

#include <fmt/format.h>

namespace modelcache {
namespace {

// Digits with at most one '.', all of `s` consumed ("1.5" yes; "1.2.3", "." no).
bool ParseDecimal(std::string_view s, double& out) {
  if (s.empty() || s == "." || std::count(s.begin(), s.end(), '.') > 1) {
    return false;
  }
  std::string text(s);
  size_t used = 0;
  try {
    out = std::stod(text, &used);
  } catch (...) {
    return false;
  }
  return used == text.size();
}

}  // namespace

Result<std::chrono::milliseconds> ParseDuration(std::string_view s) {
  auto invalid = [&] {
    return Error(Reason::InvalidSpec,
                 fmt::format("\"{}\" is not a duration (use e.g. 30s, 15m, 1h, 1h30m)", s));
  };
  if (s == "0") {
    return std::chrono::milliseconds(0);
  }
  if (s.empty()) {
    return invalid();
  }
  double total_ms = 0;
  size_t i = 0;
  while (i < s.size()) {
    size_t start = i;
    while (i < s.size() && (std::isdigit(static_cast<unsigned char>(s[i])) || s[i] == '.')) {
      ++i;
    }
    if (i == start) {
      return invalid();
    }
    double value = 0;
    if (!ParseDecimal(s.substr(start, i - start), value)) {
      return invalid();
    }
    size_t unit_start = i;
    while (i < s.size() && std::isalpha(static_cast<unsigned char>(s[i]))) {
      ++i;
    }
    std::string_view unit = s.substr(unit_start, i - unit_start);
    double scale = 0;
    if (unit == "ms") {
      scale = 1;
    } else if (unit == "s") {
      scale = 1000;
    } else if (unit == "m") {
      scale = 60'000;
    } else if (unit == "h") {
      scale = 3'600'000;
    } else if (unit == "d") {
      scale = 86'400'000;
    } else {
      return invalid();
    }
    total_ms += value * scale;
  }
  return std::chrono::milliseconds(static_cast<int64_t>(std::llround(total_ms)));
}

std::string FormatDuration(std::chrono::milliseconds d) {
  int64_t ms = d.count();
  if (ms == 0) {
    return "0s";
  }
  std::string out;
  int64_t h = ms / 3'600'000;
  ms %= 3'600'000;
  int64_t m = ms / 60'000;
  ms %= 60'000;
  if (h > 0) {
    out += std::to_string(h) + "h";
  }
  if (m > 0) {
    out += std::to_string(m) + "m";
  }
  if (ms > 0) {
    if (ms % 1000 == 0) {
      out += std::to_string(ms / 1000) + "s";
    } else if (h == 0 && m == 0 && ms < 1000) {
      out += std::to_string(ms) + "ms";
    } else {
      char buf[32];
      std::snprintf(buf, sizeof(buf), "%.3gs", static_cast<double>(ms) / 1000.0);
      out += buf;
    }
  }
  return out;
}

Result<uint64_t> ParseByteSize(std::string_view s) {
  auto invalid = [&] {
    return Error(Reason::InvalidSpec,
                 fmt::format("\"{}\" is not a byte size (use e.g. 5GiB, 500MiB, 2G)", s));
  };
  size_t i = 0;
  while (i < s.size() && (std::isdigit(static_cast<unsigned char>(s[i])) || s[i] == '.')) {
    ++i;
  }
  if (i == 0) {
    return invalid();
  }
  double value = 0;
  if (!ParseDecimal(s.substr(0, i), value)) {
    return invalid();
  }
  std::string unit(s.substr(i));
  if (!unit.empty() && unit.back() == 'B' && unit != "B") {
    unit.pop_back();
  }
  double scale = 0;
  if (unit.empty() || unit == "B") {
    scale = 1;
  } else if (unit == "Ki") {
    scale = 1024.0;
  } else if (unit == "Mi") {
    scale = 1024.0 * 1024;
  } else if (unit == "Gi") {
    scale = 1024.0 * 1024 * 1024;
  } else if (unit == "Ti") {
    scale = 1024.0 * 1024 * 1024 * 1024;
  } else if (unit == "Pi") {
    scale = 1024.0 * 1024 * 1024 * 1024 * 1024;
  } else if (unit == "K" || unit == "k") {
    scale = 1e3;
  } else if (unit == "M") {
    scale = 1e6;
  } else if (unit == "G") {
    scale = 1e9;
  } else if (unit == "T") {
    scale = 1e12;
  } else if (unit == "P") {
    scale = 1e15;
  } else {
    return invalid();
  }
  double bytes = value * scale;
  if (bytes >= 9.2e18) {
    return invalid();
  }
  return static_cast<uint64_t>(std::llround(bytes));
}

std::string FormatBytes(uint64_t bytes) {
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  auto v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024 && u < 5) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  if (u == 0) {
    std::snprintf(buf, sizeof(buf), "%llu B", static_cast<unsigned long long>(bytes));
  } else {
    std::snprintf(buf, sizeof(buf), "%.1f %s", v, kUnits[u]);
  }
  return buf;
}

}  // namespace modelcache
