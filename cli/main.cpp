// modelcache: one binary, several commands (DESIGN.md "Command line"). This file is the table of
// commands; each command's flags and body live in cli/*_command.cpp, the flag types in
// cli/flag_types.h (`run`'s daemon in daemon/).

#include <iostream>
#include <vector>

#include <CLI/CLI.hpp>

#include "cli/commands.h"
#include "cli/flag_types.h"
#include "common/build_info.h"
#include "common/guard.h"

namespace mc = modelcache::controller;

namespace {

int Main(int argc, char** argv) {
  CLI::App app{"modelcache: declarative, verified, versioned caching of HuggingFace models"};
  app.require_subcommand(1);
  app.set_version_flag(
      "--version", [] { return modelcache::VersionText(); },
      "Print the version, the git commit and the libcurl and OpenSSL versions");
  mc::Environment env;  // read once the command line is parsed (a command's run reads it)
  const std::vector<mc::Command> commands = {
      mc::AddRunCommand(app, argc, argv, env),
      mc::AddPrefetchCommand(app, env),
      mc::AddShardCommand(app),
      mc::AddGetCommand(app),
      mc::AddPullCommand(app, env),
      mc::AddValidateCommand(app),
      mc::AddGcCommand(app),
  };
  try {
    app.parse(argc, argv);
  } catch (const mc::FlagValueError& e) {
    std::cerr << "modelcache: " << e.what() << "\n";
    return e.get_exit_code();
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  env = mc::Environment::FromProcess();
  for (const mc::Command& command : commands) {
    if (command.cli->parsed()) {
      return command.run();
    }
  }
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return Main(argc, argv);
  } catch (...) {
    // A bug or std::bad_alloc (the commands' errors are values): one line and exit 1, not abort.
    std::cerr << "modelcache: unexpected exception: " << modelcache::CurrentExceptionMessage()
              << "\n";
    return 1;
  }
}
