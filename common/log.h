#pragma once

// Process-wide logging through spdlog. Text ("2026-11-24 03:46:12.123 info  message") or one JSON
// object per line ({"ts":…,"level":…,"msg":…}). Tokens and credentials are never passed to the
// logger; callers log keys, URLs without credentials and reason words.

#include <string>

#include "common/result.h"

namespace modelcache {

enum class LogFormat { Text, Json };

// Configures the default spdlog logger to write to stderr. `level` is trace|debug|info|warn|error.
// May be called again (SIGHUP) while other threads log: the logger is changed in place.
VoidResult SetupLogging(LogFormat format, const std::string& level = "info");

// Escapes a string for inclusion in a JSON log line.
std::string JsonEscape(const std::string& s);

}  // namespace modelcache
