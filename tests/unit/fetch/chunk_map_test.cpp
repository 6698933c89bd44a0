// A file's chunk map (fetch/internal/chunk_map.h): how a file is cut into ranges, what a resume
// takes from a map on disk (and which maps it refuses: each would make it skip bytes it does not
// have), and the persister that writes maps after syncing the data.

#include "fetch/internal/chunk_map.h"

#include <fcntl.h>
#include <unistd.h>

#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "tests/common/test_util.h"

namespace modelcache::fetch::internal {
namespace {

std::string Describe(const Chunks& chunks) {
  std::string out;
  for (const auto& c : chunks) {
    out += "[" + std::to_string(c->start) + "," + std::to_string(c->end) + "," +
           std::to_string(c->done.load()) + "]";
  }
  return out;
}

TEST(ChunkSizeForTest, AboutOneRangePerConnectionWithinTheBoundsAndAligned) {
  constexpr uint64_t kMiB = 1 << 20;
  EXPECT_EQ(ChunkSizeFor(64 * kMiB, 8, 1 * kMiB, 16 * kMiB), 8 * kMiB);
  EXPECT_EQ(ChunkSizeFor(1024 * kMiB, 8, 1 * kMiB, 16 * kMiB), 16 * kMiB);  // capped
  EXPECT_EQ(ChunkSizeFor(2 * kMiB, 8, 1 * kMiB, 16 * kMiB), 1 * kMiB);      // floored
  // 10 MiB + 1 over 8 connections is not a multiple of 4096: rounded up, so blocks stay aligned.
  uint64_t size = ChunkSizeFor(10 * kMiB + 1, 8, 1, 64 * kMiB);
  EXPECT_EQ(size % 4096, 0u);
  EXPECT_GE(size * 8, 10 * kMiB + 1);
  EXPECT_LE(size, (10 * kMiB + 1) / 8 + 4096);
}

TEST(SplitChunksTest, CutsTheFileAndCountsAPrefixOnDisk) {
  Chunks chunks = SplitChunks(10, 4, 6);
  EXPECT_EQ(Describe(chunks), "[0,4,4][4,8,2][8,10,0]");
  EXPECT_EQ(OnDisk(chunks), 6u);
  EXPECT_EQ(ContiguousEnd(chunks), 6u);
  EXPECT_EQ(Describe(SplitChunks(8, 4, 0)), "[0,4,0][4,8,0]");
  EXPECT_EQ(Describe(SplitChunks(8, 4, 8)), "[0,4,4][4,8,4]");
  EXPECT_TRUE(SplitChunks(0, 4, 0).empty());
}

TEST(ContiguousEndTest, StopsAtTheFirstGap) {
  Chunks chunks = SplitChunks(12, 4, 0);
  chunks[0]->done = 4;
  chunks[1]->done = 1;
  chunks[2]->done = 4;  // complete, but behind a gap
  EXPECT_EQ(ContiguousEnd(chunks), 5u);
  EXPECT_EQ(OnDisk(chunks), 9u);
  chunks[1]->done = 7;  // more than the range claims (a request that overshot): capped
  EXPECT_EQ(ContiguousEnd(chunks), 12u);
  EXPECT_EQ(OnDisk(chunks), 12u);
}

TEST(ChunkMapTextTest, RoundTripsWhatAResumeNeeds) {
  Chunks chunks = SplitChunks(10, 4, 0);
  chunks[0]->done = 4;
  chunks[2]->done = 1;
  uint64_t claimed = 0;
  std::string text = ChunkMapText(10, "etag-1", chunks, &claimed);
  EXPECT_EQ(claimed, 5u);
  auto doc = nlohmann::json::parse(text);
  EXPECT_EQ(doc["size"], 10);
  EXPECT_EQ(doc["etag"], "etag-1");
  auto map = ParseChunkMap(text, 10);
  ASSERT_TRUE(map.has_value());
  EXPECT_EQ(map->etag, "etag-1");
  EXPECT_EQ(Describe(map->chunks), "[0,4,4][4,8,0][8,10,1]");
  EXPECT_EQ(OnDisk(map->chunks), claimed);
}

TEST(ParseChunkMapTest, TakesTheRangesAsWrittenEvenIfCutDifferently) {
  // A map written with another chunk size (other flags before the restart) still says the truth.
  auto map = ParseChunkMap(R"({"size":10,"etag":"e","chunks":[[0,7,7],[7,10,2]]})", 10);
  ASSERT_TRUE(map.has_value());
  EXPECT_EQ(Describe(map->chunks), "[0,7,7][7,10,2]");
  auto no_etag = ParseChunkMap(R"({"size":4,"chunks":[[0,4,0]]})", 4);
  ASSERT_TRUE(no_etag.has_value());
  EXPECT_EQ(no_etag->etag, "");
}

TEST(ParseChunkMapTest, RefusesMapsThatDoNotDescribeTheFile) {
  const char* refused[] = {
      "",                                                     // empty
      "{",                                                    // not JSON
      "[]",                                                   // not an object
      R"({"size":11,"chunks":[[0,10,0]]})",                   // another size
      R"({"size":10})",                                       // no ranges
      R"({"size":10,"chunks":{}})",                           // ranges not a list
      R"({"size":10,"chunks":[[0,4,0],[5,10,0]]})",           // a gap
      R"({"size":10,"chunks":[[0,6,0],[4,10,0]]})",           // an overlap
      R"({"size":10,"chunks":[[0,4,0]]})",                    // short of the end
      R"({"size":10,"chunks":[[0,4,0],[4,12,0]]})",           // past the end
      R"({"size":10,"chunks":[[0,4,5],[4,10,0]]})",           // more done than the range
      R"({"size":10,"chunks":[[0,0,0],[0,10,0]]})",           // an empty range
      R"({"size":10,"chunks":[[0,4],[4,10,0]]})",             // a range of two numbers
      R"({"size":10,"chunks":[[0,"4",0],[4,10,0]]})",         // a string for a number
      R"({"size":10,"chunks":[[0,4,-1],[4,10,0]]})",          // a negative count
      R"({"size":"10","chunks":[[0,10,0]]})",                 // the size as a string
      R"({"size":10,"etag":7,"chunks":[[0,10,0]]})",          // the etag as a number
  };
  for (const char* text : refused) {
    EXPECT_FALSE(ParseChunkMap(text, 10).has_value()) << text;
  }
}

TEST(MapPersisterTest, WritesTheLatestMapOfEachFile) {
  test_util::TempDir dir;
  std::string data = dir / "blob.incomplete";
  int fd = ::open(data.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  ASSERT_GE(fd, 0);
  {
    MapPersister persister;
    for (int i = 0; i < 50; ++i) {
      persister.Persist(::dup(fd), data + ".chunks", "map " + std::to_string(i));
      persister.Persist(::dup(fd), dir / "other.chunks", "other " + std::to_string(i));
    }
    persister.Drain();
    EXPECT_EQ(test_util::ReadFile(data + ".chunks"), "map 49");
    EXPECT_EQ(test_util::ReadFile(dir / "other.chunks"), "other 49");
    persister.Persist(::dup(fd), data + ".chunks", "last");
    // Destroyed with a map queued: it is written before the thread ends.
  }
  EXPECT_EQ(test_util::ReadFile(data + ".chunks"), "last");
  ::close(fd);
}

TEST(MapPersisterTest, ADrainWithNothingQueuedReturns) {
  MapPersister persister;
  persister.Drain();
}

}  // namespace
}  // namespace modelcache::fetch::internal
