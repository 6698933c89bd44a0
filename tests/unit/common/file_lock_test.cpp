#include "common/file_lock.h"

#include <sys/stat.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <stop_token>
#include <thread>

#include <gtest/gtest.h>

#include "common/files.h"
#include "tests/common/test_util.h"

namespace modelcache {
namespace {

using test_util::TempDir;

// Two FileLocks are two open file descriptions: they exclude each other as two processes do.
TEST(FileLockTest, ExclusiveLocksExcludeEachOtherUntilReleased) {
  TempDir dir;
  std::string path = dir.path() + "/locks/a/b.lock";  // parents are created
  auto first = FileLock::TryLock(path, LockMode::Exclusive);
  ASSERT_TRUE(first) << first.error().message;
  ASSERT_TRUE(first->held());
  EXPECT_TRUE(std::filesystem::is_regular_file(path));

  auto second = FileLock::TryLock(path, LockMode::Exclusive);
  ASSERT_TRUE(second);
  EXPECT_FALSE(second->held());
  auto shared = FileLock::TryLock(path, LockMode::Shared);
  ASSERT_TRUE(shared);
  EXPECT_FALSE(shared->held());

  first->Release();
  EXPECT_FALSE(first->held());
  auto third = FileLock::TryLock(path, LockMode::Exclusive);
  ASSERT_TRUE(third);
  EXPECT_TRUE(third->held());
}

TEST(FileLockTest, SharedLocksCoexistAndKeepExclusiveOut) {
  TempDir dir;
  std::string path = dir.path() + "/inuse.lock";
  auto a = FileLock::TryLock(path, LockMode::Shared);
  auto b = FileLock::TryLock(path, LockMode::Shared);
  ASSERT_TRUE(a && b);
  EXPECT_TRUE(a->held());
  EXPECT_TRUE(b->held());
  auto x = FileLock::TryLock(path, LockMode::Exclusive);
  ASSERT_TRUE(x);
  EXPECT_FALSE(x->held());
  *a = FileLock();  // move-assigning releases the old lock
  x = FileLock::TryLock(path, LockMode::Exclusive);
  ASSERT_TRUE(x);
  EXPECT_FALSE(x->held());  // b still holds its shared lock
  FileLock moved = std::move(*b);
  EXPECT_FALSE(b->held());
  EXPECT_TRUE(moved.held());
  moved.Release();
  x = FileLock::TryLock(path, LockMode::Exclusive);
  ASSERT_TRUE(x);
  EXPECT_TRUE(x->held());
}

// Lock waits for the holder, whether it polls (a stop_token that can be requested) or blocks.
TEST(FileLockTest, LockWaitsForTheHolder) {
  TempDir dir;
  std::string path = dir.path() + "/wait.lock";
  for (bool with_stop : {true, false}) {
    auto holder = FileLock::TryLock(path, LockMode::Exclusive);
    ASSERT_TRUE(holder && holder->held());
    std::atomic<bool> released{false};
    std::stop_source source;
    std::jthread releaser([&] {
      std::this_thread::sleep_for(std::chrono::milliseconds(30));
      released = true;
      holder->Release();
    });
    auto waited = with_stop ? FileLock::Lock(path, LockMode::Exclusive, source.get_token())
                            : FileLock::Lock(path, LockMode::Exclusive);
    ASSERT_TRUE(waited) << waited.error().message;
    EXPECT_TRUE(waited->held());
    EXPECT_TRUE(released.load()) << "got the lock while the holder had it";
  }
}

TEST(FileLockTest, AWaitIsCancelledByItsStopToken) {
  TempDir dir;
  std::string path = dir.path() + "/cancel.lock";
  auto holder = FileLock::TryLock(path, LockMode::Exclusive);
  ASSERT_TRUE(holder && holder->held());
  std::stop_source source;
  std::jthread canceller([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    source.request_stop();
  });
  auto waited = FileLock::Lock(path, LockMode::Shared, source.get_token());
  ASSERT_FALSE(waited);
  EXPECT_EQ(waited.error().reason, Reason::Cancelled);
  EXPECT_NE(waited.error().message.find(path), std::string::npos);
  EXPECT_TRUE(holder->held());
}

TEST(FileLockTest, AnUnopenableLockFileIsAStorageErrorNamingIt) {
  TempDir dir;
  std::string file = dir.path() + "/plain";
  test_util::WriteFile(file, "x");
  std::string path = file + "/under-a-file.lock";  // a parent that is not a directory
  auto lock = FileLock::TryLock(path, LockMode::Exclusive);
  ASSERT_FALSE(lock);
  EXPECT_EQ(lock.error().reason, Reason::StorageError);
  auto waited = FileLock::Lock(path, LockMode::Exclusive);
  ASSERT_FALSE(waited);
  EXPECT_EQ(waited.error().reason, Reason::StorageError);
}

}  // namespace
}  // namespace modelcache
