#include "common/files.h"

#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "tests/common/test_util.h"

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

TEST(FilesTest, ReadAtReadsExactlyTheRangeAndNamesAShortFile) {
  test_util::TempDir dir;
  std::string path = dir.path() + "/data";
  ASSERT_TRUE(WriteFileAtomic(path, "0123456789"));
  std::string out(4, '\0');
  ASSERT_TRUE(ReadAt(path, 3, out));
  EXPECT_EQ(out, "3456");
  std::vector<char> past(4);
  auto short_read = ReadAt(path, 8, past);
  ASSERT_FALSE(short_read);
  EXPECT_EQ(short_read.error().reason, Reason::StorageError);
  EXPECT_EQ(short_read.error().message, "cannot read " + path + ": unexpected end of file");
  auto missing = ReadAt(dir.path() + "/none", 0, past);
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().message.rfind("cannot open " + dir.path() + "/none: ", 0), 0U);
}

TEST(FilesTest, FailuresNameThePath) {
  auto r = ReadFile("/nonexistent/modelcache/file");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().reason, Reason::StorageError);
  EXPECT_NE(r.error().message.find("/nonexistent/modelcache/file"), std::string::npos);
  auto w = WriteFileAtomic("/proc/modelcache-cannot-write/x", "data");
  EXPECT_FALSE(w);
}

std::vector<std::string> Entries(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    names.push_back(e.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

// A write that fails half-way (here the file-size limit: write() fails with EFBIG after the first
// 4 KiB) leaves the old file whole and no temporary file behind.
TEST(FilesTest, WriteAtomicFailureLeavesTheOldFileWholeAndNoTemporary) {
  test_util::TempDir dir;
  std::string path = dir.path() + "/state.json";
  ASSERT_TRUE(WriteFileAtomic(path, "old"));

  struct rlimit saved {};
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &saved), 0);
  struct sigaction ignore {};
  struct sigaction saved_action {};
  ignore.sa_handler = SIG_IGN;
  ASSERT_EQ(::sigaction(SIGXFSZ, &ignore, &saved_action), 0);  // EFBIG instead of the signal
  struct rlimit small = saved;
  small.rlim_cur = 4096;
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &small), 0);
  auto r = WriteFileAtomic(path, std::string(1 << 20, 'x'));
  ::setrlimit(RLIMIT_FSIZE, &saved);
  ::sigaction(SIGXFSZ, &saved_action, nullptr);

  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().reason, Reason::StorageError);
  EXPECT_EQ(r.error().message.rfind("cannot write " + path + ".tmp.", 0), 0u) << r.error().message;
  EXPECT_EQ(*ReadFile(path), "old");
  EXPECT_EQ(Entries(dir.path()), std::vector<std::string>{"state.json"});
}

// The temporary name comes from tmp_name; a name that is taken is never written into (another
// writer's, or a crash's): the next one is used.
TEST(FilesTest, WriteAtomicUsesTmpNameAndSkipsATakenName) {
  test_util::TempDir dir;
  std::string path = dir.path() + "/ref";
  std::string taken = dir.path() + "/.ref.modelcache-tmp-taken";
  test_util::WriteFile(taken, "someone else's");
  std::vector<std::string> names;
  auto namer = [&](const std::string& p) {
    names.push_back(names.empty() ? taken : dir.path() + "/.ref.modelcache-tmp-" + UniqueSuffix());
    EXPECT_EQ(p, path);
    return names.back();
  };
  ASSERT_TRUE(WriteFileAtomic(path, "abc", namer));
  ASSERT_EQ(names.size(), 2u);
  EXPECT_EQ(*ReadFile(path), "abc");
  EXPECT_EQ(*ReadFile(taken), "someone else's");
  EXPECT_FALSE(std::filesystem::exists(names[1]));
  EXPECT_EQ(Entries(dir.path()), (std::vector<std::string>{".ref.modelcache-tmp-taken", "ref"}));
}

// A temporary file that cannot be created: the target is untouched, the error names the name.
TEST(FilesTest, WriteAtomicCreateFailureNamesTheTemporaryAndKeepsTheTarget) {
  test_util::TempDir dir;
  std::string path = dir.path() + "/file";
  ASSERT_TRUE(WriteFileAtomic(path, "old"));
  std::string missing = dir.path() + "/no-such-dir/tmp";
  auto r = WriteFileAtomic(path, "new", [&](const std::string&) { return missing; });
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().reason, Reason::StorageError);
  EXPECT_EQ(r.error().message, "cannot create " + missing + ": No such file or directory");
  EXPECT_EQ(*ReadFile(path), "old");
}

// A full disk and a full quota are the same to the resource: InsufficientStorage (freeing space
// helps); every other errno is a StorageError.
TEST(FilesTest, IoErrorMapsFullDiskAndQuotaToInsufficientStorage) {
  EXPECT_EQ(IoReason(ENOSPC), Reason::InsufficientStorage);
  EXPECT_EQ(IoReason(EDQUOT), Reason::InsufficientStorage);
  EXPECT_EQ(IoReason(EACCES), Reason::StorageError);
  EXPECT_EQ(IoReason(EIO), Reason::StorageError);
  EXPECT_EQ(IoReason(0), Reason::StorageError);

  Error quota = IoError("cannot write", "/store/x.tmp", EDQUOT);
  EXPECT_EQ(quota.reason, Reason::InsufficientStorage);
  EXPECT_EQ(quota.message, "cannot write /store/x.tmp: " + ErrnoMessage(EDQUOT));
  Error denied = IoError("cannot create", "/store/y", EACCES);
  EXPECT_EQ(denied.reason, Reason::StorageError);
  EXPECT_EQ(denied.message, "cannot create /store/y: Permission denied");
}

TEST(FilesTest, FreeBytesIsPositive) {
  auto free = FreeBytes(::testing::TempDir());
  ASSERT_TRUE(free);
  EXPECT_GT(*free, 0u);
}

}  // namespace
}  // namespace modelcache
