#include "cli/run_config.h"

#include <cctype>
#include <fstream>

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include "cli/flag_types.h"

namespace modelcache::controller {
namespace {

std::string ConfigFileName(const CLI::App* command) {
  const CLI::Option* config = command->get_config_ptr();
  if (config != nullptr && config->count() > 0) {
    return config->results().front();
  }
  return "the config file";
}

std::string LongName(const CLI::Option* option) {
  const auto& names = option->get_lnames();
  return names.empty() ? std::string() : names.front();
}

}  // namespace

std::vector<CLI::ConfigItem> YamlConfig::from_config(std::istream& input) const {
  std::string file = ConfigFileName(command_);
  YAML::Node root;
  try {
    root = YAML::Load(input);
  } catch (const YAML::Exception& e) {
    throw CLI::ConfigError(
        fmt::format("{}: line {}: invalid YAML: {}", file, e.mark.line + 1, e.msg));
  }
  std::vector<CLI::ConfigItem> out;
  if (root.IsNull()) {
    return out;  // an empty file (or only comments) sets nothing
  }
  if (!root.IsMap()) {
    throw CLI::ConfigError(fmt::format(
        "{}: expected a mapping of option names to values (e.g. \"workers: 4\")", file));
  }
  for (const auto& entry : root) {
    std::string key = entry.first.Scalar();
    int line = entry.first.Mark().line + 1;
    const CLI::Option* option = command_->get_option_no_throw("--" + key);
    if (key.empty() || option == nullptr || option == command_->get_config_ptr() ||
        option == command_->get_help_ptr() || LongName(option) != key) {
      throw CLI::ConfigError(fmt::format(
          "{}: line {}: unknown key \"{}\": not an option of `modelcache {}` (keys are the long "
          "option names without \"--\"; see modelcache {} --help)",
          file, line, key, command_->get_name(), command_->get_name()));
    }
    CLI::ConfigItem item;
    item.name = key;
    const YAML::Node& value = entry.second;
    if (value.IsScalar()) {
      item.inputs.push_back(value.Scalar());
    } else if (value.IsSequence()) {
      for (const auto& element : value) {
        if (!element.IsScalar()) {
          throw CLI::ConfigError(fmt::format(
              "{}: line {}: \"{}\": a list may hold only plain values", file, line, key));
        }
        item.inputs.push_back(element.Scalar());
      }
    } else if (value.IsNull()) {
      throw CLI::ConfigError(
          fmt::format(R"({}: line {}: "{}" has no value (write "{}: \"\"" for an empty one))",
                      file, line, key, key));
    } else {
      throw CLI::ConfigError(fmt::format(
          "{}: line {}: \"{}\": expected a value or a list, not a mapping", file, line, key));
    }
    out.push_back(std::move(item));
  }
  return out;
}

std::string YamlConfig::to_config(const CLI::App* app, bool default_also, bool write_description,
                                  std::string /*prefix*/) const {
  YAML::Emitter out;
  out << YAML::BeginMap;
  for (const CLI::Option* option : app->get_options()) {
    std::string name = LongName(option);
    if (name.empty() || option == app->get_help_ptr() || option == app->get_config_ptr()) {
      continue;
    }
    std::string value;
    if (option->count() > 0) {
      value = CLI::detail::join(option->results(), ",");
    } else if (default_also) {
      value = option->get_default_str();
    } else {
      continue;
    }
    if (write_description && !option->get_description().empty()) {
      out << YAML::Comment(option->get_description());
    }
    out << YAML::Key << name << YAML::Value << value;
  }
  out << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

namespace {

// CLI11 2.1 reads a configuration file only for the top-level app, so a subcommand's --config
// is applied here, once the subcommand's own arguments are parsed and bound: each key fills an
// option the command line left unset, exactly as CLI11 does for the top level (and runs the
// option's validators, whose errors name the flag).
void ApplyConfigFile(CLI::App* command, const YamlConfig& reader) {
  const CLI::Option* config = command->get_config_ptr();
  if (config == nullptr || config->count() == 0 || config->results().front().empty()) {
    return;
  }
  std::string file = config->results().front();
  std::ifstream in(file);
  if (!in) {
    throw CLI::FileError(file + ": cannot read the --config file");
  }
  for (const CLI::ConfigItem& item : reader.from_config(in)) {
    CLI::Option* option = command->get_option_no_throw("--" + item.name);
    if (option == nullptr || option->count() > 0) {
      continue;  // given on the command line, which wins
    }
    if (option->get_expected_min() == 0) {
      if (item.inputs.size() != 1) {
        throw CLI::ConfigError(
            fmt::format("{}: \"{}\" is a flag: write true or false", file, item.name));
      }
      std::string value = item.inputs.front();
      for (char& c : value) {
        c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      }
      if (value == "false" || value == "no" || value == "off" || value == "0") {
        // Leaving a flag out is what "false" means; adding it as a result would count as given
        // (and trip exclusions such as --watch-dir vs --kubernetes).
        continue;
      }
      option->add_result(option->get_flag_value(item.name, item.inputs.front()));
    } else {
      option->add_result(item.inputs);
    }
    try {
      option->run_callback();
    } catch (const FlagValueError& e) {
      throw FlagValueError(fmt::format("{}: \"{}\": {}", file, item.name, e.what()));
    } catch (const CLI::ParseError& e) {
      throw CLI::ConfigError(fmt::format("{}: \"{}\": {}", file, item.name, e.what()));
    }
  }
}

}  // namespace

CLI::Option* AddConfigFileOption(CLI::App* command) {
  auto reader = std::make_shared<YamlConfig>(command);
  command->config_formatter(reader);
  command->parse_complete_callback([command, reader] { ApplyConfigFile(command, *reader); });
  CLI::Option* option = command->set_config(
      "--config", "",
      "YAML file of options: keys are the long option names without \"--\" (workers: 4); flags "
      "on the command line win over it; re-read on SIGHUP (docs/operations.md). Default: none");
  return option;
}

ConfigValues OptionValues(const CLI::App& command) {
  ConfigValues values;
  for (const CLI::Option* option : command.get_options()) {
    std::string name = LongName(option);
    if (name.empty() || option == command.get_help_ptr() || option == command.get_config_ptr()) {
      continue;
    }
    values[name] =
        option->count() > 0 ? CLI::detail::join(option->results(), ",") : option->get_default_str();
  }
  return values;
}

Result<ConfigValues> Reparse(CLI::App& app, const CLI::App& command, int argc, char** argv) {
  try {
    app.clear();
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return Error(Reason::InvalidSpec, e.what());
  }
  return OptionValues(command);
}

fetch::TransferEngineOptions TransferEngineOptionsFrom(const TransferFlags& flags) {
  fetch::TransferEngineOptions options;
  options.max_connections = flags.max_connections;
  options.max_connections_per_job = flags.max_connections_per_artifact;
  options.max_bytes_per_second = flags.max_bandwidth;
  options.chunk_size = flags.chunk_size;
  options.stall_timeout = flags.stall_timeout;
  return options;
}

reconcilers::ReconcilerOptions CommandReconcilerOptions(const std::string& hf_endpoint,
                                                        const std::string& s3_endpoint,
                                                        const TransferFlags& transfer,
                                                        const Environment& env) {
  reconcilers::ReconcilerOptions ro;
  ro.aws_env = env.aws;
  ro.aws_overrides.endpoint_url = s3_endpoint;
  ro.hf_endpoint = !hf_endpoint.empty()       ? hf_endpoint
                   : !env.hf_endpoint.empty() ? env.hf_endpoint
                                              : "https://huggingface.co";
  ro.hf_token = env.hf_token;
  ro.transfer = TransferEngineOptionsFrom(transfer);
  return ro;
}

}  // namespace modelcache::controller
