// `modelcache --version`: the project version from CMake, the commit of the checkout it was built
// from, and the libcurl and OpenSSL it runs with.

#include <filesystem>
#include <string>

#include <gtest/gtest.h>

#include "tests/integration/harness.h"

namespace modelcache::itest {
namespace {

TEST(VersionTest, NamesTheProjectVersionTheCommitAndTheLibraries) {
  CommandResult r = RunModelcache({"--version"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out.rfind("modelcache " MC_PROJECT_VERSION, 0), 0u) << r.out;
  EXPECT_NE(r.out.find("\nlibcurl "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("\nOpenSSL 3."), std::string::npos) << r.out;
  // Built from a git checkout (as the test suite always is, but for a tarball): its HEAD.
  if (std::filesystem::exists(std::string(MC_SOURCE_DIR) + "/.git")) {
    CommandResult git = RunProgram({"/usr/bin/git", "-C", MC_SOURCE_DIR, "rev-parse", "HEAD"});
    ASSERT_EQ(git.exit_code, 0) << git.err;
    std::string head = git.out.substr(0, git.out.find('\n'));
    ASSERT_EQ(head.size(), 40u) << git.out;
    EXPECT_NE(r.out.find("(commit " + head), std::string::npos) << r.out;
  }
}

}  // namespace
}  // namespace modelcache::itest
