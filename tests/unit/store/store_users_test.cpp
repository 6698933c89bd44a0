#include "store/store_users.h"

#include <filesystem>

#include <gtest/gtest.h>

#include "tests/unit/store/test_util.h"

namespace modelcache::store {
namespace {

using testing::TempDir;
using testing::WriteText;

StoreUserRecord Record(const std::string& id, int64_t heartbeat, const std::string& name) {
  StoreUserRecord r;
  r.id = id;
  r.description = "test " + id;
  r.heartbeat = heartbeat;
  r.refs.names = {name};
  r.refs.versions = {{name, "0123456789ab"}};
  r.refs.snapshots = {{"models--org--" + name, std::string(40, 'c')}};
  return r;
}

TEST(StoreUsersTest, LiveRecordsAreMergedExpiredOnesDroppedAndRemoved) {
  TempDir dir;
  const int64_t now = 1'000'000;
  const int64_t expiry = kStoreUserExpiry.count();
  ASSERT_TRUE(WriteStoreUser(dir.path(), Record("self", now, "mine")));
  ASSERT_TRUE(WriteStoreUser(dir.path(), Record("fresh", now - expiry + 1, "a")));
  ASSERT_TRUE(WriteStoreUser(dir.path(), Record("stale", now - expiry, "b")));

  auto users = ReadStoreUsers(dir.path(), now, "self");
  ASSERT_TRUE(users) << users.error().ToString();
  EXPECT_EQ(users->live, std::vector<std::string>{"fresh"});
  EXPECT_EQ(users->expired, std::vector<std::string>{"stale"});
  EXPECT_EQ(users->refs.names, std::set<std::string>{"a"});
  EXPECT_EQ(users->refs.versions.count({"a", "0123456789ab"}), 1U);
  EXPECT_EQ(users->refs.snapshots.count({"models--org--a", std::string(40, 'c')}), 1U);
  EXPECT_FALSE(std::filesystem::exists(dir.path() + "/users/stale.json"));
  EXPECT_TRUE(std::filesystem::exists(dir.path() + "/users/self.json"));
}

TEST(StoreUsersTest, AnUnreadableRecordIsAnErrorAndIdsAreSafe) {
  TempDir dir;
  WriteText(dir.path() + "/users/broken.json", "{\"formatVersion\": 1, \"heartbeat\": \"x\"}");
  auto users = ReadStoreUsers(dir.path(), 1);
  ASSERT_FALSE(users);
  EXPECT_EQ(users.error().reason, Reason::StorageError);
  EXPECT_NE(users.error().message.find("broken.json"), std::string::npos);
  EXPECT_FALSE(WriteStoreUser(dir.path(), Record("../x", 1, "a")));
  EXPECT_EQ(StoreUserId("node a", "x"), StoreUserId("node a", "x"));
  EXPECT_NE(StoreUserId("node-a", "x"), StoreUserId("node-a", "y"));
  EXPECT_EQ(StoreUserId("node a", "x").rfind("node_a-", 0), 0U);
}

}  // namespace
}  // namespace modelcache::store
