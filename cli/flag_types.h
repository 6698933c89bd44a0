#pragma once

// The command line's flag types, as CLI11 validators: a duration ("30s", "1h30m"), a byte size
// ("5GiB", "500MB") and a rate ("100MB/s"), all as common/units.h parses them, some with a lower
// bound. Add*Option binds a typed value to a flag: the option keeps the text that was given (what
// --help shows as the default, what the config file sets and what SIGHUP compares,
// cli/run_config.h), its validator checks the text and its callback stores the parsed value. The
// default is given as text and parsed the same way, so it is written in one place.
//
// A bad value, on the command line or in the --config file, fails the parse with FlagValueError,
// whose message names the flag and what is wrong ("--chunk-size: must be at least 64KiB") and
// whose exit code is 2; main prints it after "modelcache: ". CLI11's own checks (CLI::Range,
// CLI::IsMember) keep CLI11's messages and exit codes.

#include <chrono>
#include <cstdint>
#include <string>

#include <CLI/CLI.hpp>

#include "daemon/options.h"

namespace modelcache::controller {

class FlagValueError : public CLI::ParseError {
 public:
  // `message` is the whole text, e.g. "--gc-interval: must be a positive duration like 10m".
  explicit FlagValueError(const std::string& message);
};

// The least a duration flag takes, and what a value that is not a duration or is below it fails
// with ("must be a positive duration like 1m"). Without one, any duration (0 too) is taken and a
// bad one fails with common/units.h's message.
struct DurationBound {
  std::chrono::milliseconds min;
  std::string expected;
};
// A duration of at least 1ms.
DurationBound Positive(const std::string& example);

CLI::Option* AddDurationOption(CLI::App* command, const std::string& name,
                               std::chrono::milliseconds& out, const std::string& default_text,
                               const std::string& description);
CLI::Option* AddDurationOption(CLI::App* command, const std::string& name,
                               std::chrono::milliseconds& out, const std::string& default_text,
                               const std::string& description, const DurationBound& bound);

// A byte size; with `min` > 0, a smaller one fails with "must be at least <min_text>".
CLI::Option* AddByteSizeOption(CLI::App* command, const std::string& name, uint64_t& out,
                               const std::string& default_text, const std::string& description,
                               uint64_t min = 0, const std::string& min_text = "");

// A byte rate: a byte size with an optional "/s" ("100MB/s"); 0 means unlimited.
CLI::Option* AddRateOption(CLI::App* command, const std::string& name, uint64_t& out,
                           const std::string& default_text, const std::string& description);

// The transfer engine's flags of run, prefetch and pull: --max-connections,
// --max-connections-per-artifact, --max-bandwidth, --chunk-size (at least 64KiB) and
// --stall-timeout (at least 1s).
void AddTransferFlags(CLI::App* command, TransferFlags& flags);

}  // namespace modelcache::controller
