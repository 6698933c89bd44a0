#include "common/allow_list.h"

#include <gtest/gtest.h>

namespace modelcache {
namespace {

AllowList List(const std::vector<std::string>& prefixes) {
  auto list = AllowList::Parse(prefixes, "--allowed-endpoints");
  EXPECT_TRUE(list) << list.error().message;
  return *list;
}

TEST(AllowListTest, MatchesOriginExactlyAndPathOnSegments) {
  AllowList list = List({"https://hub.example/mirror/"});
  for (const char* ok : {"https://hub.example/mirror", "https://hub.example/mirror/",
                         "https://HUB.example:443/mirror/org", "HTTPS://hub.example/mirror//x"}) {
    EXPECT_TRUE(list.Allows(ok)) << ok;
  }
  for (const char* bad :
       {"https://hub.example", "https://hub.example/mirrors", "https://hub.example.evil.com/mirror",
        "https://hub.example:8443/mirror", "http://hub.example/mirror",
        "https://hub.example@evil.com/mirror", "https://evil.com@hub.example/mirror",
        "https://hub.example/mirror/../admin", "https://hub.example/mirror/%2E%2e/admin",
        "https://hub.example/mirror?x=1", "https://hub.example/mirror#x",
        "https://hub.example/mirror\\x", "", "hub.example/mirror"}) {
    EXPECT_FALSE(list.Allows(bad)) << bad;
  }
}

TEST(AllowListTest, FillsDefaultPortsAndTakesWholeHosts) {
  AllowList list = List({"http://127.0.0.1:80", "s3://bucket"});
  EXPECT_TRUE(list.Allows("http://127.0.0.1/anything"));
  EXPECT_FALSE(list.Allows("http://127.0.0.1:8080"));
  EXPECT_TRUE(list.Allows("s3://bucket/prefix/more"));
  EXPECT_FALSE(list.Allows("s3://bucket-2/prefix"));
  EXPECT_FALSE(list.Allows("http://10.0.0.1"));
}

TEST(AllowListTest, LocalStoresArePathsComparedOnSegments) {
  AllowList list = List({"/srv/models", "file:///var/cache/mc/"});
  for (const char* ok : {"/srv/models", "/srv/models/team-a", "file:///srv/models/x",
                         "/var/cache/mc", "/srv//models/"}) {
    EXPECT_TRUE(list.Allows(ok)) << ok;
  }
  for (const char* bad : {"/srv/models-b", "/srv", "/srv/models/../etc", "file:///elsewhere",
                          "file://host/srv/models", "s3://srv/models", "relative/path"}) {
    EXPECT_FALSE(list.Allows(bad)) << bad;
  }
}

TEST(AllowListTest, ParseNamesTheFlagAndRefusesForms) {
  for (const char* bad : {"https://user@hub.example", "https://hub.example/a/../b", "https://",
                          "://x", "https://hub.example/?q"}) {
    auto list = AllowList::Parse({bad}, "--allowed-endpoints");
    ASSERT_FALSE(list) << bad;
    EXPECT_EQ(list.error().reason, Reason::InvalidSpec);
    EXPECT_EQ(list.error().message.rfind("--allowed-endpoints: ", 0), 0U) << list.error().message;
  }
}

}  // namespace
}  // namespace modelcache
