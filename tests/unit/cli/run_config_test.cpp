#include "cli/run_config.h"

#include <fstream>

#include <gtest/gtest.h>

#include "tests/common/test_util.h"

namespace modelcache::controller {
namespace {

using test_util::TempDir;
using test_util::WriteFile;

// A command shaped like `modelcache run`: options with defaults, a flag, a list, a validator.
struct Command {
  CLI::App app{"test"};
  CLI::App* run = nullptr;
  int workers = 2;
  std::string level = "info";
  std::string dir;
  bool kube = false;
  std::vector<std::string> include;

  Command() {
    app.require_subcommand(1);
    run = app.add_subcommand("run", "run");
    run->add_option("--workers", workers, "Workers")
        ->capture_default_str()
        ->check(CLI::Range(1, 8));
    run->add_option("--log-level", level, "Level")->capture_default_str();
    auto* d = run->add_option("--watch-dir", dir, "Dir");
    auto* k = run->add_flag("--kubernetes", kube, "Kube");
    d->excludes(k);
    run->add_option("--include", include, "Patterns");
    AddConfigFileOption(run);
  }

  // Parses; "" on success, else the error message.
  std::string Parse(std::vector<std::string> args) {
    args.insert(args.begin(), "modelcache");
    std::vector<char*> argv;
    for (auto& a : args) {
      argv.push_back(a.data());
    }
    try {
      app.parse(static_cast<int>(argv.size()), argv.data());
    } catch (const CLI::ParseError& e) {
      return e.what();
    }
    return "";
  }
};

TEST(RunConfigTest, FileSetsOptionsAndTheCommandLineWins) {
  TempDir dir;
  std::string file = dir.path() + "/c.yaml";
  WriteFile(file,
            "# comment\nworkers: 4\nlog-level: debug\nwatch-dir: /models\nkubernetes: false\n"
            "include: ['*.json', '*.safetensors']\n");
  Command c;
  ASSERT_EQ(c.Parse({"run", "--config", file, "--log-level", "warn"}), "");
  EXPECT_EQ(c.workers, 4);
  EXPECT_EQ(c.level, "warn");  // the flag wins
  EXPECT_EQ(c.dir, "/models");
  EXPECT_FALSE(c.kube);
  EXPECT_EQ(c.include, (std::vector<std::string>{"*.json", "*.safetensors"}));

  ConfigValues values = OptionValues(*c.run);
  EXPECT_EQ(values["workers"], "4");
  EXPECT_EQ(values["log-level"], "warn");
  EXPECT_EQ(values["include"], "*.json,*.safetensors");
  EXPECT_EQ(values.count("config"), 0u);
  EXPECT_EQ(values.count("help"), 0u);
}

TEST(RunConfigTest, WithoutAFileTheValuesAreTheDefaults) {
  Command c;
  ASSERT_EQ(c.Parse({"run"}), "");
  ConfigValues values = OptionValues(*c.run);
  EXPECT_EQ(values["workers"], "2");
  EXPECT_EQ(values["log-level"], "info");
  EXPECT_EQ(values["watch-dir"], "");
}

TEST(RunConfigTest, ErrorsNameTheFileTheLineAndTheKey) {
  TempDir dir;
  std::string file = dir.path() + "/c.yaml";
  struct Case {
    std::string yaml;
    std::string expected;
  };
  for (const Case& k : std::vector<Case>{
           {"workers: 2\nwokers: 3\n", file + ": line 2: unknown key \"wokers\""},
           {"config: other.yaml\n", file + ": line 1: unknown key \"config\""},
           {"help: true\n", "unknown key \"help\""},
           {"workers:\n  nested: 1\n", file + ": line 1: \"workers\": expected a value or a list"},
           {"workers:\n", file + ": line 1: \"workers\" has no value"},
           {"include: [a, [b]]\n", "\"include\": a list may hold only plain values"},
           {"- workers\n", file + ": expected a mapping"},
           {"workers: [1\n", file + ": line 2: invalid YAML"},
           {"workers: 9\n", file + ": \"workers\": --workers: Value 9 not in range"},
           {"kubernetes: maybe\n", "kubernetes"},
       }) {
    WriteFile(file, k.yaml);
    Command c;
    std::string error = c.Parse({"run", "--config", file});
    EXPECT_NE(error.find(k.expected), std::string::npos) << k.yaml << " -> " << error;
  }
  Command missing;
  std::string error = missing.Parse({"run", "--config", dir.path() + "/none.yaml"});
  EXPECT_NE(error.find("none.yaml"), std::string::npos) << error;
}

TEST(RunConfigTest, AnEmptyFileSetsNothing) {
  TempDir dir;
  std::string file = dir.path() + "/c.yaml";
  WriteFile(file, "# nothing yet\n");
  Command c;
  ASSERT_EQ(c.Parse({"run", "--config", file}), "");
  EXPECT_EQ(c.workers, 2);
}

TEST(RunConfigTest, ReparseReadsTheFileAgain) {
  TempDir dir;
  std::string file = dir.path() + "/c.yaml";
  WriteFile(file, "workers: 3\n");
  Command c;
  std::vector<std::string> args{"modelcache", "run", "--config", file, "--log-level", "warn"};
  std::vector<char*> argv;
  for (auto& a : args) {
    argv.push_back(a.data());
  }
  c.app.parse(static_cast<int>(argv.size()), argv.data());
  ConfigValues before = OptionValues(*c.run);
  EXPECT_EQ(before["workers"], "3");

  WriteFile(file, "workers: 5\nlog-level: debug\n");
  auto after = Reparse(c.app, *c.run, static_cast<int>(argv.size()), argv.data());
  ASSERT_TRUE(after) << after.error().message;
  EXPECT_EQ((*after)["workers"], "5");
  EXPECT_EQ((*after)["log-level"], "warn");  // still the command line's

  WriteFile(file, "workers: 5\nbogus: 1\n");
  auto bad = Reparse(c.app, *c.run, static_cast<int>(argv.size()), argv.data());
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().reason, Reason::InvalidSpec);
  EXPECT_NE(bad.error().message.find("unknown key \"bogus\""), std::string::npos);
}

}  // namespace
}  // namespace modelcache::controller
