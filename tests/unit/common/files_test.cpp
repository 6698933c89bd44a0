#include "common/files.h"

#include <sys/stat.h>

#include <filesystem>

#include <gtest/gtest.h>

namespace modelcache {
namespace {

TEST(FilesTest, WriteAtomicCreatesParentsAndReplaces) {
  std::string dir = ::testing::TempDir() + "/files-" + UniqueSuffix();
  std::string path = dir + "/a/b/c.json";
  ASSERT_TRUE(WriteFileAtomic(path, "one"));
  EXPECT_EQ(*ReadFile(path), "one");
  ASSERT_TRUE(WriteFileAtomic(path, "two"));
  EXPECT_EQ(*ReadFile(path), "two");
  // No temporary file is left behind.
  int entries = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir + "/a/b")) {
    (void)e;
    ++entries;
  }
  EXPECT_EQ(entries, 1);
  std::filesystem::remove_all(dir);
}

TEST(FilesTest, FailuresNameThePath) {
  auto r = ReadFile("/nonexistent/modelcache/file");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().reason, Reason::StorageError);
  EXPECT_NE(r.error().message.find("/nonexistent/modelcache/file"), std::string::npos);
  auto w = WriteFileAtomic("/proc/modelcache-cannot-write/x", "data");
  EXPECT_FALSE(w);
}

TEST(FilesTest, FreeBytesIsPositive) {
  auto free = FreeBytes(::testing::TempDir());
  ASSERT_TRUE(free);
  EXPECT_GT(*free, 0u);
}

}  // namespace
}  // namespace modelcache
