#pragma once

// Shared helpers of the store unit tests: a temporary directory per test and small file helpers.

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>

#include <gtest/gtest.h>

#include "tests/common/test_util.h"

namespace modelcache::store::testing {

inline constexpr uint64_t kMiB = 1ull << 20;

// The secret access key of AWS's documentation examples (SigV4's published test vectors use it).
inline constexpr const char* kExampleSecretKey = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

// A per-test directory (mc-store-XXXXXX).
class TempDir : public test_util::TempDir {
 public:
  TempDir() : test_util::TempDir("mc-store") { EXPECT_FALSE(path().empty()); }
};

inline void WriteText(const std::string& path, const std::string& content) {
  test_util::WriteFile(path, content);
}

inline std::string ReadText(const std::string& path) { return test_util::ReadFile(path); }

using test_util::RandomBytes;

inline ino_t Inode(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
  return st.st_ino;
}

inline std::string LinkTarget(const std::string& path) {
  std::error_code ec;
  auto target = std::filesystem::read_symlink(path, ec);
  return ec ? std::string() : target.string();
}

}  // namespace modelcache::store::testing
