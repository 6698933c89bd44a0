#include "controller/run_config.h"

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

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
          throw CLI::ConfigError(fmt::format("{}: line {}: \"{}\": a list may hold only plain values",
                                             file, line, key));
        }
        item.inputs.push_back(element.Scalar());
      }
    } else if (value.IsNull()) {
      throw CLI::ConfigError(fmt::format(
          "{}: line {}: \"{}\" has no value (write \"{}: \\\"\\\"\" for an empty one)", file,
          line, key, key));
    } else {
      throw CLI::ConfigError(
          fmt::format("{}: line {}: \"{}\": expected a value or a list, not a mapping", file, line,
                      key));
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

CLI::Option* AddConfigFileOption(CLI::App* command) {
  command->config_formatter(std::make_shared<YamlConfig>(command));
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
    values[name] = option->count() > 0 ? CLI::detail::join(option->results(), ",")
                                       : option->get_default_str();
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

}  // namespace modelcache::controller
