#include "cli/flag_types.h"

#include <gtest/gtest.h>

#include "cli/run_config.h"
#include "tests/common/test_util.h"

namespace modelcache::controller {
namespace {

using std::chrono::milliseconds;
using test_util::TempDir;
using test_util::WriteFile;

// A subcommand with one flag of each type, as `modelcache run` declares them.
struct Flags {
  CLI::App app{"test"};
  CLI::App* run = app.add_subcommand("run", "run");
  milliseconds period{};
  milliseconds heartbeat{};
  uint64_t max_bytes = 1;
  TransferFlags transfer;

  Flags() {
    AddDurationOption(run, "--period", period, "10m", "Period");
    AddDurationOption(run, "--heartbeat", heartbeat, "1m", "Heartbeat", Positive("1m"));
    AddByteSizeOption(run, "--max-bytes", max_bytes, "0", "Limit");
    AddTransferFlags(run, transfer);
    AddConfigFileOption(run);
  }

  // "" on success, else "<exit code> <message>".
  std::string Parse(std::vector<std::string> args) {
    args.insert(args.begin(), {"modelcache", "run"});
    std::vector<char*> argv;
    for (auto& a : args) {
      argv.push_back(a.data());
    }
    try {
      app.parse(static_cast<int>(argv.size()), argv.data());
    } catch (const CLI::ParseError& e) {
      return std::to_string(e.get_exit_code()) + " " + e.what();
    }
    return "";
  }
};

TEST(FlagTypesTest, DefaultsAreParsedFromTheirText) {
  Flags f;
  EXPECT_EQ(f.period, std::chrono::minutes(10));
  EXPECT_EQ(f.heartbeat, std::chrono::minutes(1));
  EXPECT_EQ(f.max_bytes, 0u);
  EXPECT_EQ(f.transfer.chunk_size, 8u << 20);
  EXPECT_EQ(f.transfer.stall_timeout, std::chrono::seconds(30));
  EXPECT_EQ(f.run->get_option("--period")->get_default_str(), "10m");
  ASSERT_EQ(f.Parse({}), "");
  EXPECT_EQ(f.period, std::chrono::minutes(10));
}

TEST(FlagTypesTest, GivenValuesAreParsedAndKeptAsText) {
  Flags f;
  ASSERT_EQ(f.Parse({"--period", "1h30m", "--max-bytes", "2GiB", "--max-bandwidth", "100MB/s",
                     "--chunk-size", "64KiB", "--stall-timeout", "1s"}),
            "");
  EXPECT_EQ(f.period, std::chrono::minutes(90));
  EXPECT_EQ(f.max_bytes, 2ULL << 30);
  EXPECT_EQ(f.transfer.max_bandwidth, 100'000'000u);
  EXPECT_EQ(f.transfer.chunk_size, 64u << 10);
  EXPECT_EQ(f.transfer.stall_timeout, std::chrono::seconds(1));
  // What --config and SIGHUP compare is the text given, not the parsed value.
  EXPECT_EQ(OptionValues(*f.run)["period"], "1h30m");
  EXPECT_EQ(OptionValues(*f.run)["max-bandwidth"], "100MB/s");
}

TEST(FlagTypesTest, BadValuesExit2NamingTheFlag) {
  EXPECT_EQ(Flags().Parse({"--period", "5q"}),
            "2 --period: \"5q\" is not a duration (use e.g. 30s, 15m, 1h, 1h30m)");
  EXPECT_EQ(Flags().Parse({"--period", "0"}), "");  // no bound: 0 is a duration
  EXPECT_EQ(Flags().Parse({"--heartbeat", "0s"}),
            "2 --heartbeat: must be a positive duration like 1m");
  EXPECT_EQ(Flags().Parse({"--heartbeat", "x"}),
            "2 --heartbeat: must be a positive duration like 1m");
  EXPECT_EQ(Flags().Parse({"--chunk-size", "1KiB"}), "2 --chunk-size: must be at least 64KiB");
  EXPECT_EQ(Flags().Parse({"--chunk-size", "zz"}),
            "2 --chunk-size: \"zz\" is not a byte size (use e.g. 5GiB, 500MiB, 2G)");
  EXPECT_EQ(Flags().Parse({"--stall-timeout", "500ms"}),
            "2 --stall-timeout: must be a duration of at least 1s, like 30s");
  EXPECT_EQ(Flags().Parse({"--max-bandwidth", "fast"}),
            "2 --max-bandwidth: \"fast\" is not a byte size (use e.g. 5GiB, 500MiB, 2G) "
            "(expected a rate like 100MB/s, or 0)");
  // CLI11's own validators keep their exit code.
  EXPECT_EQ(Flags().Parse({"--max-connections", "0"}).rfind("105 --max-connections", 0), 0u);
}

TEST(FlagTypesTest, TheConfigFileGoesThroughTheSameTypes) {
  TempDir dir;
  std::string file = dir.path() + "/c.yaml";
  WriteFile(file, "period: 2m\nmax-bandwidth: 1GiB/s\n");
  Flags good;
  ASSERT_EQ(good.Parse({"--config", file}), "");
  EXPECT_EQ(good.period, std::chrono::minutes(2));
  EXPECT_EQ(good.transfer.max_bandwidth, 1ULL << 30);

  WriteFile(file, "heartbeat: -1s\n");
  EXPECT_EQ(Flags().Parse({"--config", file}),
            "2 " + file + ": \"heartbeat\": --heartbeat: must be a positive duration like 1m");
}

TEST(FlagTypesTest, HelpShowsTheTextDefault) {
  Flags f;
  std::string help = f.run->help();
  EXPECT_NE(help.find("--period TEXT=10m"), std::string::npos) << help;
  EXPECT_NE(help.find("--chunk-size TEXT=8MiB"), std::string::npos) << help;
}

}  // namespace
}  // namespace modelcache::controller
