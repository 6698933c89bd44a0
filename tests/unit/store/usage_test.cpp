#include "store/usage.h"

#include <filesystem>

#include <gtest/gtest.h>

#include "tests/common/test_util.h"

namespace modelcache::store {
namespace {

namespace fs = std::filesystem;
using test_util::TempDir;
using test_util::WriteFile;

TEST(StoreUsageTest, CountsEachInodeOnceAndSkipsSymlinks) {
  TempDir dir;
  const std::string& root = dir.path();
  WriteFile(root + "/hub/blobs/a", std::string(1000, 'a'));
  WriteFile(root + "/hub/blobs/b", std::string(300, 'b'));
  fs::create_directories(root + "/artifacts/x");
  fs::create_hard_link(root + "/hub/blobs/a", root + "/artifacts/x/model.bin");
  fs::create_directories(root + "/hub/snapshots/c");
  fs::create_symlink("../../blobs/a", root + "/hub/snapshots/c/model.bin");
  auto usage = MeasureStoreUsage(root);
  ASSERT_TRUE(usage) << usage.error().message;
  EXPECT_EQ(usage->used_bytes, 1300u);
  EXPECT_GT(usage->free_bytes, 0u);

  auto missing = MeasureStoreUsage(root + "/none");
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().reason, Reason::StorageError);
  EXPECT_NE(missing.error().message.find(root + "/none"), std::string::npos);
}

}  // namespace
}  // namespace modelcache::store
