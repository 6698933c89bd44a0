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
  // Built from a git checkout (as the test suite always is, but for a tarball): a commit of it,
  // HEAD or, when commits were made since the build, an ancestor of HEAD.
  if (std::filesystem::exists(std::string(MC_SOURCE_DIR) + "/.git")) {
    size_t at = r.out.find(" (commit ");
    ASSERT_NE(at, std::string::npos) << r.out;
    std::string commit = r.out.substr(at + 9, 40);
    ASSERT_EQ(commit.find_first_not_of("0123456789abcdef"), std::string::npos) << r.out;
    CommandResult git = RunProgram(
        {"/usr/bin/git", "-C", MC_SOURCE_DIR, "merge-base", "--is-ancestor", commit, "HEAD"});
    EXPECT_EQ(git.exit_code, 0) << commit << " is not HEAD or an ancestor of it: " << git.err;
  }
}

}  // namespace
}  // namespace modelcache::itest
