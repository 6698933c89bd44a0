#include "cli/flag_types.h"

#include <functional>
#include <utility>

#include "common/result.h"
#include "common/units.h"

namespace modelcache::controller {
namespace {

// ExitCodes are CLI11's (100 and up); a bad flag value has always exited 2.
constexpr int kBadFlagValueExitCode = 2;

// Parses a flag's text; the error message is what follows "--flag: ".
template <typename T>
using FlagParser = std::function<Result<T>(const std::string&)>;

// A text option of `command` whose validator runs `parse` (throwing FlagValueError on an error,
// so that the exit code is 2 rather than CLI11's ValidationError's) and whose callback stores the
// parsed value in `out`. The default text goes through the same two steps now.
template <typename T>
CLI::Option* AddParsedOption(CLI::App* command, const std::string& name, T& out,
                             const std::string& default_text, const std::string& description,
                             FlagParser<T> parse) {
  CLI::Validator check(
      [name, parse](std::string& text) {
        if (auto value = parse(text); !value) {
          throw FlagValueError(name + ": " + value.error().message);
        }
        return std::string();
      },
      "");  // no description: --help shows "TEXT=<default>" as for any text option
  CLI::Option* option = command->add_option_function<std::string>(
      name, [&out, parse](const std::string& text) { out = *parse(text); }, description);
  option->check(check)->run_callback_for_default()->default_val(default_text);
  return option;
}

FlagParser<std::chrono::milliseconds> DurationParser(const DurationBound* bound) {
  if (bound == nullptr) {
    return [](const std::string& text) { return ParseDuration(text); };
  }
  return [min = bound->min, expected = bound->expected](
             const std::string& text) -> Result<std::chrono::milliseconds> {
    auto d = ParseDuration(text);
    if (!d || *d < min) {
      return Error(Reason::InvalidSpec, expected);
    }
    return d;
  };
}

}  // namespace

FlagValueError::FlagValueError(const std::string& message)
    : CLI::ParseError("FlagValueError", message, kBadFlagValueExitCode) {}

DurationBound Positive(const std::string& example) {
  return {std::chrono::milliseconds(1), "must be a positive duration like " + example};
}

CLI::Option* AddDurationOption(CLI::App* command, const std::string& name,
                               std::chrono::milliseconds& out, const std::string& default_text,
                               const std::string& description) {
  return AddParsedOption(command, name, out, default_text, description, DurationParser(nullptr));
}

CLI::Option* AddDurationOption(CLI::App* command, const std::string& name,
                               std::chrono::milliseconds& out, const std::string& default_text,
                               const std::string& description, const DurationBound& bound) {
  return AddParsedOption(command, name, out, default_text, description, DurationParser(&bound));
}

CLI::Option* AddByteSizeOption(CLI::App* command, const std::string& name, uint64_t& out,
                               const std::string& default_text, const std::string& description,
                               uint64_t min, const std::string& min_text) {
  FlagParser<uint64_t> parse = [min, min_text](const std::string& text) -> Result<uint64_t> {
    auto size = ParseByteSize(text);
    if (size && *size < min) {
      return Error(Reason::InvalidSpec, "must be at least " + min_text);
    }
    return size;
  };
  return AddParsedOption(command, name, out, default_text, description, std::move(parse));
}

CLI::Option* AddRateOption(CLI::App* command, const std::string& name, uint64_t& out,
                           const std::string& default_text, const std::string& description) {
  FlagParser<uint64_t> parse = [](const std::string& text) -> Result<uint64_t> {
    std::string size = text;
    if (size.size() > 2 && size.compare(size.size() - 2, 2, "/s") == 0) {
      size.resize(size.size() - 2);
    }
    auto rate = ParseByteSize(size);
    if (!rate) {
      return Error(rate.error().reason,
                   rate.error().message + " (expected a rate like 100MB/s, or 0)");
    }
    return rate;
  };
  return AddParsedOption(command, name, out, default_text, description, std::move(parse));
}

void AddTransferFlags(CLI::App* command, TransferFlags& flags) {
  command
      ->add_option("--max-connections", flags.max_connections,
                   "HTTP connections over all downloads of this process")
      ->capture_default_str()
      ->check(CLI::Range(1, 1024));
  command
      ->add_option("--max-connections-per-artifact", flags.max_connections_per_artifact,
                   "Requests one artifact's download keeps in flight (files and byte ranges)")
      ->capture_default_str()
      ->check(CLI::Range(1, 1024));
  AddRateOption(command, "--max-bandwidth", flags.max_bandwidth, "0",
                "Download rate limit over the process, e.g. 100MB/s or 1GiB/s; 0 = unlimited");
  AddByteSizeOption(command, "--chunk-size", flags.chunk_size, "8MiB",
                    "Largest byte range per request; large files are split into ranges fetched "
                    "in parallel (at least 64KiB)",
                    64U << 10, "64KiB");
  AddDurationOption(command, "--stall-timeout", flags.stall_timeout, "30s",
                    "Abort and retry a Hub request or download that moves less than 1 KiB/s for "
                    "this long (at least 1s)",
                    {std::chrono::seconds(1), "must be a duration of at least 1s, like 30s"});
}

}  // namespace modelcache::controller
