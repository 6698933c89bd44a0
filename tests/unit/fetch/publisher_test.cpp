// Publishing a verified file (fetch/internal/publisher.h): into place with its directory made,
// its chunk map gone, and the result handed back to the job's queue.

#include "fetch/internal/publisher.h"

#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <mutex>

#include <gtest/gtest.h>

#include "fetch/transfer.h"
#include "tests/common/test_util.h"

namespace modelcache::fetch::internal {
namespace {

FileTask TaskIn(const test_util::TempDir& dir, const std::string& name) {
  FileTask t;
  t.path = name;
  t.incomplete_path = dir / (name + ".incomplete");
  t.final_path = dir / ("blobs/sub/" + name);
  return t;
}

TEST(PublisherTest, RenamesIntoANewDirectoryAndRemovesTheMap) {
  test_util::TempDir dir;
  FileTask t = TaskIn(dir, "a");
  test_util::WriteFile(t.incomplete_path, "bytes");
  test_util::WriteFile(t.incomplete_path + ".chunks", "{}");
  int fd = ::open(t.incomplete_path.c_str(), O_RDWR | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(Publisher::PutInPlace(t, true, fd));
  EXPECT_EQ(test_util::ReadFile(t.final_path), "bytes");
  EXPECT_NE(::access(t.incomplete_path.c_str(), F_OK), 0);
  EXPECT_NE(::access((t.incomplete_path + ".chunks").c_str(), F_OK), 0);
}

TEST(PublisherTest, AFailureIsAStorageErrorNamingTheFile) {
  test_util::TempDir dir;
  FileTask t = TaskIn(dir, "missing");  // nothing to rename
  int fd = ::open((dir / "other").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  ASSERT_GE(fd, 0);
  auto r = Publisher::PutInPlace(t, false, fd);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().reason, Reason::StorageError);
  EXPECT_NE(r.error().message.find(t.incomplete_path), std::string::npos);
}

TEST(PublisherTest, EveryFileComesBackThroughTheJobQueue) {
  test_util::TempDir dir;
  JobQueue queue;
  std::vector<FileTask> tasks;
  for (int i = 0; i < 20; ++i) {
    tasks.push_back(TaskIn(dir, "f" + std::to_string(i)));
  }
  {
    Publisher publisher(queue);
    for (size_t i = 0; i < tasks.size(); ++i) {
      test_util::WriteFile(tasks[i].incomplete_path, std::to_string(i));
      Publication p;
      p.file = i;
      p.task = &tasks[i];
      p.fd = ::open(tasks[i].incomplete_path.c_str(), O_RDWR | O_CLOEXEC);
      ASSERT_GE(p.fd, 0);
      publisher.Publish(std::move(p), static_cast<int>(i + 1));
    }
    std::unique_lock lock(queue.mu);
    ASSERT_TRUE(queue.cv.wait_for(lock, std::chrono::seconds(10),
                                  [&] { return queue.published.size() == tasks.size(); }));
    EXPECT_TRUE(queue.wake);
  }
  std::vector<bool> seen(tasks.size());
  for (const Publication& p : queue.published) {
    EXPECT_TRUE(p.result) << p.result.error().ToString();
    seen[p.file] = true;
    EXPECT_EQ(test_util::ReadFile(tasks[p.file].final_path), std::to_string(p.file));
  }
  EXPECT_EQ(std::count(seen.begin(), seen.end(), true), static_cast<long>(tasks.size()));
}

}  // namespace
}  // namespace modelcache::fetch::internal
