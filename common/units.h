#pragma once

// Parsing and printing of the quantities that appear in specs and flags.

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

#include "common/result.h"

namespace modelcache {

// Go-style durations as Kubernetes writes them: "1h", "90m", "1h30m", "45s", "500ms", "0".
// InvalidSpec (message without a field path; callers add it) on anything else.
Result<std::chrono::milliseconds> ParseDuration(std::string_view s);
// "1h30m0s"-style, shortest form: "1h", "90s" -> "1m30s", 0 -> "0s".
std::string FormatDuration(std::chrono::milliseconds d);

// Byte sizes: "5GiB", "500MiB", "1.5GB", "1024", "10Ki", "2G" (Kubernetes quantity suffixes
// Ki Mi Gi Ti Pi and K M G T P, with or without a trailing "B").
Result<uint64_t> ParseByteSize(std::string_view s);
// Human-readable, binary units: "1.5 GiB", "512 B".
std::string FormatBytes(uint64_t bytes);

}  // namespace modelcache
