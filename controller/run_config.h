#pragma once

// The configuration file of `modelcache run` (`--config FILE`): a YAML mapping whose keys are the
// command's long option names without the dashes, e.g.
//
//   watch-dir: /etc/modelcache/models
//   workers: 4
//   listen: 127.0.0.1:8081
//   kubernetes: false        # flags take true/false
//
// Every option of the command is accepted, including ones added later, because the keys are
// looked up in the command's own option list (CLI11's Config interface). A flag given on the
// command line wins over the file. An unknown key, a nested mapping, a key without a value or
// malformed YAML fails the parse with one line naming the file (and the key or line).
//
// Also the option snapshot that SIGHUP compares: every option's value as text.

#include <CLI/CLI.hpp>

#include "common/result.h"
#include "controller/commands.h"

namespace modelcache::controller {

// CLI11's configuration reader for YAML; `command` must outlive it. Exposed for tests; use
// AddConfigFileOption.
class YamlConfig final : public CLI::Config {
 public:
  explicit YamlConfig(const CLI::App* command) : command_(command) {}
  std::vector<CLI::ConfigItem> from_config(std::istream& input) const override;
  // Writes the command's options (given, or all with `default_also`) as YAML.
  std::string to_config(const CLI::App* app, bool default_also, bool write_description,
                        std::string prefix) const override;

 private:
  const CLI::App* command_;
};

// Adds `--config FILE` to `command` (a subcommand) and makes it read YAML as above.
CLI::Option* AddConfigFileOption(CLI::App* command);

// Every option of `command` by long name (without "--"; not --help or --config) with its value as
// text: what the command line or the config file gave, joined with ",", else the default shown
// in --help ("" when there is none).
ConfigValues OptionValues(const CLI::App& command);

// Parses `argv` with `app` again (the config file is read anew; the command line still wins) and
// returns OptionValues(*command). A parse error (say, an unknown key just added to the file) is
// InvalidSpec with CLI11's message. Writes the variables the options are bound to: the caller
// must not be reading them concurrently.
Result<ConfigValues> Reparse(CLI::App& app, const CLI::App& command, int argc, char** argv);

}  // namespace modelcache::controller
