// Artifact name records: adoption, sharing, conflicts, the owner's spec change, release, and
// claims racing from threads and processes on one store.

#include "store/name_claims.h"

#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "tests/unit/store/test_util.h"

namespace modelcache::store {
namespace {

using testing::TempDir;

class NameClaimsTest : public ::testing::Test {
 protected:
  TempDir dir_;
  const std::string& root() { return dir_.path(); }
};

TEST_F(NameClaimsTest, FirstClaimerOwnsAndRecordsTheName) {
  auto c = ClaimName(root(), "llama", "kubernetes team-a/llama", "spec-a");
  ASSERT_TRUE(c) << c.error().ToString();
  EXPECT_EQ(*c, ClaimOutcome::Owner);
  auto record = ReadNameRecord(root(), "llama");
  ASSERT_TRUE(record && *record);
  EXPECT_EQ((*record)->spec_id, "spec-a");
  EXPECT_EQ((*record)->holders, std::vector<std::string>{"kubernetes team-a/llama"});
  EXPECT_EQ(NameRecordPath(root(), "llama"), root() + "/artifacts/llama/owner.json");
  // Claiming again changes nothing.
  auto again = ClaimName(root(), "llama", "kubernetes team-a/llama", "spec-a");
  ASSERT_TRUE(again);
  EXPECT_EQ(*again, ClaimOutcome::Owner);
}

TEST_F(NameClaimsTest, AnotherSpecConflictsAndIsNotRecorded) {
  ASSERT_TRUE(ClaimName(root(), "llama", "kubernetes team-a/llama", "spec-a"));
  auto c = ClaimName(root(), "llama", "kubernetes tenant/steal", "spec-b");
  ASSERT_FALSE(c);
  EXPECT_EQ(c.error().reason, Reason::ArtifactNameConflict);
  EXPECT_NE(c.error().message.find("spec.artifactName"), std::string::npos);
  // The status message does not tell the tenant who owns it.
  EXPECT_EQ(c.error().message.find("team-a"), std::string::npos) << c.error().message;
  auto record = ReadNameRecord(root(), "llama");
  ASSERT_TRUE(record && *record);
  EXPECT_EQ((*record)->holders, std::vector<std::string>{"kubernetes team-a/llama"});
  EXPECT_FALSE(CheckName(root(), "llama", "spec-b"));
  EXPECT_TRUE(CheckName(root(), "llama", "spec-a"));
  EXPECT_TRUE(CheckName(root(), "free", "spec-b"));
}

TEST_F(NameClaimsTest, SameSpecSharesAndInheritsOnRelease) {
  ASSERT_TRUE(ClaimName(root(), "m", "dir /w a/x", "s"));
  auto shared = ClaimName(root(), "m", "dir /w b/y", "s");
  ASSERT_TRUE(shared);
  EXPECT_EQ(*shared, ClaimOutcome::Shared);
  ASSERT_TRUE(ReleaseName(root(), "m", "dir /w a/x"));
  auto record = ReadNameRecord(root(), "m");
  ASSERT_TRUE(record && *record);
  EXPECT_EQ((*record)->holders, std::vector<std::string>{"dir /w b/y"});
  auto now = ClaimName(root(), "m", "dir /w b/y", "s");
  ASSERT_TRUE(now);
  EXPECT_EQ(*now, ClaimOutcome::Owner);
}

TEST_F(NameClaimsTest, OwnerKeepsTheNameThroughASpecChangeAndSharersLoseIt) {
  ASSERT_TRUE(ClaimName(root(), "m", "owner", "old"));
  ASSERT_TRUE(ClaimName(root(), "m", "sharer", "old"));
  auto changed = ClaimName(root(), "m", "owner", "new");
  ASSERT_TRUE(changed);
  EXPECT_EQ(*changed, ClaimOutcome::Owner);
  auto record = ReadNameRecord(root(), "m");
  ASSERT_TRUE(record && *record);
  EXPECT_EQ((*record)->spec_id, "new");
  EXPECT_EQ((*record)->holders, std::vector<std::string>{"owner"});
  auto sharer = ClaimName(root(), "m", "sharer", "old");
  ASSERT_FALSE(sharer);
  EXPECT_EQ(sharer.error().reason, Reason::ArtifactNameConflict);
}

TEST_F(NameClaimsTest, ReleaseOfTheLastHolderFreesTheName) {
  ASSERT_TRUE(ClaimName(root(), "m", "owner", "a"));
  ASSERT_TRUE(ReleaseName(root(), "m", "stranger"));  // holds nothing: no change
  ASSERT_TRUE(ReadNameRecord(root(), "m").value().has_value());
  ASSERT_TRUE(ReleaseName(root(), "m", "owner"));
  auto record = ReadNameRecord(root(), "m");
  ASSERT_TRUE(record);
  EXPECT_FALSE(record->has_value());
  EXPECT_FALSE(std::filesystem::exists(NameRecordPath(root(), "m")));
  auto next = ClaimName(root(), "m", "next", "b");
  ASSERT_TRUE(next);
  EXPECT_EQ(*next, ClaimOutcome::Owner);
  EXPECT_TRUE(ReleaseName(root(), "never-claimed", "owner"));
}

TEST_F(NameClaimsTest, MalformedRecordIsAStorageErrorAndUnsafeNamesAreRefused) {
  testing::WriteText(NameRecordPath(root(), "m"), "{\"holders\": 3}");
  auto c = ClaimName(root(), "m", "owner", "a");
  ASSERT_FALSE(c);
  EXPECT_EQ(c.error().reason, Reason::StorageError);
  EXPECT_NE(c.error().message.find("owner.json"), std::string::npos);
  for (const char* bad : {"", "..", "a/b", ".hidden"}) {
    auto r = ClaimName(root(), bad, "owner", "a");
    ASSERT_FALSE(r) << bad;
    EXPECT_EQ(r.error().reason, Reason::InvalidSpec) << bad;
  }
}

// Many threads with different specs claim one free name at once: exactly one owns it, and the
// record names that one.
TEST_F(NameClaimsTest, RacingThreadsHaveExactlyOneOwner) {
  constexpr int kThreads = 8;
  std::atomic<int> owners{0};
  std::atomic<int> conflicts{0};
  std::vector<std::string> holders(kThreads);
  std::vector<std::thread> threads;
  std::atomic<bool> go{false};
  for (int i = 0; i < kThreads; ++i) {
    holders[i] = "holder-" + std::to_string(i);
    threads.emplace_back([&, i] {
      while (!go) {
        std::this_thread::yield();
      }
      auto c = ClaimName(root(), "m", holders[i], "spec-" + std::to_string(i));
      if (c) {
        owners++;
      } else if (c.error().reason == Reason::ArtifactNameConflict) {
        conflicts++;
      }
    });
  }
  go = true;
  for (auto& t : threads) {
    t.join();
  }
  EXPECT_EQ(owners, 1);
  EXPECT_EQ(conflicts, kThreads - 1);
  auto record = ReadNameRecord(root(), "m");
  ASSERT_TRUE(record && *record);
  EXPECT_EQ((*record)->holders.size(), 1u);
}

// Two processes (two daemons on one store) claim the same name with different specs: exactly one
// wins. Each child reports by its exit status.
TEST_F(NameClaimsTest, RacingProcessesHaveExactlyOneOwner) {
  constexpr int kChildren = 4;
  std::vector<pid_t> pids;
  for (int i = 0; i < kChildren; ++i) {
    pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      auto c = ClaimName(root(), "m", "proc-" + std::to_string(i), "spec-" + std::to_string(i));
      ::_exit(c ? 0 : c.error().reason == Reason::ArtifactNameConflict ? 1 : 2);
    }
    pids.push_back(pid);
  }
  int owners = 0;
  int conflicts = 0;
  for (pid_t pid : pids) {
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFEXITED(status));
    owners += WEXITSTATUS(status) == 0 ? 1 : 0;
    conflicts += WEXITSTATUS(status) == 1 ? 1 : 0;
  }
  EXPECT_EQ(owners, 1);
  EXPECT_EQ(conflicts, kChildren - 1);
}

}  // namespace
}  // namespace modelcache::store
