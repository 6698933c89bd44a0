#include "controller/directory/file_status_store.h"

#include <filesystem>
#include <fstream>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "common/files.h"
#include "tests/unit/controller/memory_status_store.h"
#include "tests/common/test_util.h"

namespace modelcache::controller {
namespace {

using test_util::TempDir;

crds::ModelCache Object(const std::string& ns, const std::string& name) {
  crds::ModelCache mc;
  mc.metadata.namespace_ = ns;
  mc.metadata.name = name;
  mc.metadata.generation = 3;
  mc.metadata.uid = "0b5c1f0e-1111-2222-3333-444455556666";
  mc.metadata.creation_timestamp = "2026-11-24T03:00:00Z";
  mc.metadata.annotations["modelcache.dev/spec-hash"] = "abc123";
  mc.spec.source.repo = "Qwen/Qwen3-0.6B";
  mc.spec.source.type = "model";
  mc.spec.source.revision = "main";
  mc.spec.artifact_name = "qwen3-0-6b";
  mc.status.observed_generation = 3;
  mc.status.phase = "Downloading";
  mc.status.resolved_revision = "c1899de289a04d12100db370d81485cdf75e47ca";
  mc.status.progress = crds::ProgressStatus{100, 1000, 1, 5, 50};
  crds::Condition ready;
  ready.type = "Ready";
  ready.status = "False";
  ready.reason = "Downloading";
  ready.message = "1 of 5 files";
  ready.last_transition_time = "2026-11-24T03:00:01Z";
  ready.observed_generation = 3;
  mc.status.conditions.push_back(ready);
  return mc;
}

std::vector<std::string> FilesUnder(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir)) {
    if (e.is_regular_file()) {
      out.push_back(std::filesystem::relative(e.path(), dir).string());
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

TEST(FileStatusStoreTest, RoundTripsTheFullObject) {
  TempDir dir;
  FileStatusStore store(dir.path());
  auto mc = Object("default", "qwen");
  ASSERT_TRUE(store.Write(mc));
  auto read = store.Read(mc.key());
  ASSERT_TRUE(read) << read.error().message;
  ASSERT_TRUE(read->has_value());
  EXPECT_EQ(**read, mc);
  EXPECT_EQ(store.PathFor(mc.key()), dir.path() + "/status/default/qwen.json");
  // Only the final file: no temporary left behind.
  EXPECT_EQ(FilesUnder(dir.path()), std::vector<std::string>{"status/default/qwen.json"});
}

TEST(FileStatusStoreTest, OverwriteLeavesNoTemporaries) {
  TempDir dir;
  FileStatusStore store(dir.path());
  auto mc = Object("default", "qwen");
  for (int i = 0; i < 20; ++i) {
    mc.status.observed_generation = i;
    ASSERT_TRUE(store.Write(mc));
  }
  EXPECT_EQ(FilesUnder(dir.path()), std::vector<std::string>{"status/default/qwen.json"});
  EXPECT_EQ((*store.Read(mc.key()))->status.observed_generation, 19);
}

TEST(FileStatusStoreTest, ConcurrentWritersLeaveOneWholeFile) {
  TempDir dir;
  FileStatusStore store(dir.path());
  std::vector<std::thread> threads;
  threads.reserve(4);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      auto mc = Object("default", "qwen");
      mc.status.phase = "Phase" + std::to_string(t);
      for (int i = 0; i < 10; ++i) {
        EXPECT_TRUE(store.Write(mc));
      }
    });
  }
  for (auto& t : threads) {
    t.join();
  }
  auto read = store.Read({"default", "qwen"});
  ASSERT_TRUE(read) << read.error().message;
  ASSERT_TRUE(read->has_value());
  EXPECT_EQ((*read)->status.phase.rfind("Phase", 0), 0u);
  EXPECT_EQ(FilesUnder(dir.path()), std::vector<std::string>{"status/default/qwen.json"});
}

TEST(FileStatusStoreTest, MissingIsNulloptAndRemoveIsIdempotent) {
  TempDir dir;
  FileStatusStore store(dir.path());
  auto read = store.Read({"default", "nope"});
  ASSERT_TRUE(read);
  EXPECT_FALSE(read->has_value());
  auto mc = Object("default", "qwen");
  ASSERT_TRUE(store.Write(mc));
  ASSERT_TRUE(store.Remove(mc.key()));
  EXPECT_FALSE(store.Read(mc.key())->has_value());
  EXPECT_TRUE(store.Remove(mc.key()));
}

TEST(FileStatusStoreTest, ListIsOrderedAndSkipsCorruptAndForeignFiles) {
  TempDir dir;
  FileStatusStore store(dir.path());
  ASSERT_TRUE(store.Write(Object("team-b", "x")));
  ASSERT_TRUE(store.Write(Object("default", "zeta")));
  ASSERT_TRUE(store.Write(Object("default", "alpha")));
  test_util::WriteFile(dir.path() + "/status/default/broken.json", "{not json");
  test_util::WriteFile(dir.path() + "/status/default/notes.txt", "hello");
  test_util::WriteFile(dir.path() + "/status/default/half.json.tmp.123", "{");
  // A file whose content names another object is not trusted either.
  auto other = Object("default", "other");
  test_util::WriteFile(dir.path() + "/status/default/mislabeled.json", crds::ToJson(other).dump());
  auto list = store.List();
  ASSERT_TRUE(list);
  std::vector<std::string> names;
  for (const auto& mc : *list) {
    names.push_back(mc.metadata.namespace_ + "/" + mc.metadata.name);
  }
  EXPECT_EQ(names, (std::vector<std::string>{"default/alpha", "default/zeta", "team-b/x"}));
  // Read of the corrupt one is an error, not "absent".
  auto broken = store.Read({"default", "broken"});
  ASSERT_FALSE(broken);
  EXPECT_EQ(broken.error().reason, Reason::StorageError);
}

TEST(FileStatusStoreTest, ListOfAnEmptyStateDirIsEmpty) {
  TempDir dir;
  FileStatusStore store(dir.path() + "/never-created");
  auto list = store.List();
  ASSERT_TRUE(list);
  EXPECT_TRUE(list->empty());
}

TEST(FileStatusStoreTest, RejectsKeysThatAreNotFileNames) {
  TempDir dir;
  FileStatusStore store(dir.path());
  for (auto [ns, name] : std::vector<std::pair<std::string, std::string>>{
           {"default", "../escape"}, {"..", "x"}, {"default", ""}, {"", "x"}, {"a/b", "x"}}) {
    auto w = store.Write(Object(ns, name));
    ASSERT_FALSE(w) << ns << "/" << name;
    EXPECT_EQ(w.error().reason, Reason::InvalidSpec);
    auto r = store.Read({ns, name});
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().reason, Reason::InvalidSpec);
  }
  EXPECT_TRUE(FilesUnder(dir.path()).empty());
}

TEST(MemoryStatusStoreTest, RoundTripAndCountsWrites) {
  MemoryStatusStore store;
  auto mc = Object("default", "qwen");
  ASSERT_TRUE(store.Write(mc));
  ASSERT_TRUE(store.Write(mc));
  EXPECT_EQ(store.writes(), 2);
  EXPECT_EQ(**store.Read(mc.key()), mc);
  EXPECT_EQ(store.List()->size(), 1u);
  ASSERT_TRUE(store.Remove(mc.key()));
  EXPECT_FALSE(store.Read(mc.key())->has_value());
}

}  // namespace
}  // namespace modelcache::controller
