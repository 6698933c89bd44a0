// `modelcache validate`: checks manifest files as the daemon would read them.

#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "cli/commands.h"
#include "crds/manifest_check.h"

namespace modelcache::controller {

int Validate(const std::vector<std::string>& files) {
  size_t problems = 0;
  for (const auto& file : files) {
    for (const auto& p : crds::CheckManifestFile(file)) {
      std::cout << p.ToString() << "\n";
      ++problems;
    }
  }
  // Not errors of any one file: the daemon refuses the second claim of a name at run time.
  std::vector<crds::ManifestProblem> warnings = crds::CheckArtifactNames(files);
  for (const auto& w : warnings) {
    std::cout << w.ToString() << "\n";
  }
  if (problems > 0) {
    std::cerr << problems << (problems == 1 ? " problem" : " problems") << " found\n";
    return 1;
  }
  std::cerr << files.size() << (files.size() == 1 ? " file" : " files") << " valid";
  if (!warnings.empty()) {
    std::cerr << ", " << warnings.size() << (warnings.size() == 1 ? " warning" : " warnings");
  }
  std::cerr << "\n";
  return 0;
}

Command AddValidateCommand(CLI::App& app) {
  auto files = std::make_shared<std::vector<std::string>>();
  CLI::App* cmd = app.add_subcommand("validate", "Validate ModelCache manifests offline");
  cmd->add_option("files", *files, "YAML files")->required();
  return {cmd, [files] { return Validate(*files); }};
}

}  // namespace modelcache::controller
