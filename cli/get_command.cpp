// `modelcache get`: the status files of directory mode as kubectl prints ModelCaches.

#include <chrono>
#include <iostream>
#include <memory>
#include <string_view>
#include <vector>

#include <CLI/CLI.hpp>

#include "cli/commands.h"
#include "cli/status_table.h"
#include "controller/directory/file_status_store.h"

namespace modelcache::controller {

int Get(const GetOptions& options) {
  if (!options.output.empty() && options.output != "wide" && options.output != "json" &&
      options.output != "yaml") {
    std::cerr << "error: unable to match a printer suitable for the output format \""
              << options.output << "\", allowed formats are: json,wide,yaml\n";
    return 2;
  }
  FileStatusStore statuses(options.state_dir);
  auto all = statuses.List();
  if (!all) {
    std::cerr << "error: " << all.error().message << "\n";
    return 1;
  }
  std::vector<crds::ModelCache> selected;
  for (auto& obj : *all) {
    if (!options.all_namespaces && obj.metadata.namespace_ != options.namespace_) {
      continue;
    }
    if (!options.name.empty() && obj.metadata.name != options.name) {
      continue;
    }
    selected.push_back(std::move(obj));
  }
  if (!options.name.empty() && selected.empty()) {
    std::cerr << "Error from server (NotFound): modelcaches.modelcache.dev \"" << options.name
              << "\" not found\n";
    return 1;
  }
  if (options.output == "json" || options.output == "yaml") {
    std::cout << FormatList(selected, options.output == "yaml");
    return 0;
  }
  std::string table =
      FormatTable(selected, options.output == "wide", std::chrono::system_clock::now(),
                  options.all_namespaces ? std::string_view() : options.namespace_);
  (selected.empty() ? std::cerr : std::cout) << table;
  return 0;
}

Command AddGetCommand(CLI::App& app) {
  auto get = std::make_shared<GetOptions>();
  CLI::App* cmd = app.add_subcommand("get", "Show ModelCache status (directory mode)");
  cmd->add_option("name", get->name, "Only this resource");
  cmd->add_option("-n,--namespace", get->namespace_, "Namespace")->capture_default_str();
  cmd->add_flag("-A,--all-namespaces", get->all_namespaces, "All namespaces");
  cmd->add_option("-o,--output", get->output, "wide, json or yaml");
  cmd->add_option("--state-dir", get->state_dir, "The daemon's --state-dir")->capture_default_str();
  return {cmd, [get] { return Get(*get); }};
}

}  // namespace modelcache::controller
