#pragma once

// The configuration file of `modelcache run` (`--config FILE`): a YAML mapping whose keys are the
// command's long option names without the dashes, e.g.
//
//   watch-dir: /etc/modelcache/models
//   workers: 4
//   listen: 127.0.0.1:8081
//   kubernetes: false        # flags take true/false (false = leaving the flag out)
//
// Every option of the command is accepted, including ones added later, because the keys are
// looked up in the command's own option list (CLI11's Config interface parses the file; the
// values are applied once the command line is parsed, since CLI11 2.1 reads configuration files
// for the top-level app only). A flag given on the command line wins over the file, and the
// options' own validators check the file's values. An unknown key, a nested mapping, a key without
// a value or malformed YAML fails the parse with one line naming the file (and the key or line).
//
// Also the option snapshot that SIGHUP compares: every option's value as text, and the reconciler
// and transfer-engine settings that `run`, `prefetch` and `pull` derive alike from their flags.

#include <CLI/CLI.hpp>

#include "cli/commands.h"
#include "common/result.h"
#include "fetch/transfer_engine.h"
#include "reconcilers/model_cache_reconciler.h"

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

// The transfer engine's settings from the --max-connections … --stall-timeout flags.
fetch::TransferEngineOptions TransferEngineOptionsFrom(const TransferFlags& flags);

// The reconciler settings `run` and `prefetch` derive alike: the Hub endpoint (`hf_endpoint`, the
// --hf-endpoint flag, else HF_ENDPOINT, else https://huggingface.co) with the environment's token,
// the S3 settings (the AWS_* environment; `s3_endpoint`, the --s3-endpoint flag, wins over
// AWS_ENDPOINT_URL and the profile) and the transfer engine's flags. Every other field keeps its
// default: the caller sets stores, limits and callbacks.
reconcilers::ReconcilerOptions CommandReconcilerOptions(const std::string& hf_endpoint,
                                                        const std::string& s3_endpoint,
                                                        const TransferFlags& transfer,
                                                        const Environment& env);

}  // namespace modelcache::controller
