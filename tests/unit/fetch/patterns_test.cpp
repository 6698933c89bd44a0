// MatchesPatterns against huggingface_hub's filter_repo_objects (fnmatchcase, "dir/" patterns),
// and the pure pieces of HubClient: MapError and ResolveUrl.

#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "fetch/hub_client.h"

namespace modelcache::fetch {
namespace {

struct PatternCase {
  std::string path;
  std::vector<std::string> include;
  std::vector<std::string> exclude;
  bool kept;
};

class MatchesPatternsTest : public ::testing::TestWithParam<PatternCase> {};

TEST_P(MatchesPatternsTest, FollowsFilterRepoObjects) {
  const PatternCase& c = GetParam();
  EXPECT_EQ(MatchesPatterns(c.path, c.include, c.exclude), c.kept)
      << "path " << c.path << " include[0] " << (c.include.empty() ? "-" : c.include[0])
      << " exclude[0] " << (c.exclude.empty() ? "-" : c.exclude[0]);
}

INSTANTIATE_TEST_SUITE_P(
    Table, MatchesPatternsTest,
    ::testing::Values(
        // No patterns: everything.
        PatternCase{"config.json", {}, {}, true}, PatternCase{"a/b/c.bin", {}, {}, true},
        // "*" crosses "/" (fnmatch, unlike a shell).
        PatternCase{"config.json", {"*.json"}, {}, true},
        PatternCase{"sub/dir/config.json", {"*.json"}, {}, true},
        PatternCase{"model.safetensors", {"*.json"}, {}, false},
        PatternCase{"config.json.bak", {"*.json"}, {}, false},
        // Case-sensitive (fnmatchcase).
        PatternCase{"Config.JSON", {"*.json"}, {}, false},
        // Any include pattern is enough.
        PatternCase{"model.safetensors", {"*.json", "*.safetensors"}, {}, true},
        PatternCase{"tokenizer_config.json", {"tokenizer*"}, {}, true},
        PatternCase{"sub/tokenizer.json", {"tokenizer*"}, {}, false},
        // Exclusion wins over inclusion.
        PatternCase{"original/consolidated.pth", {}, {"original/*"}, false},
        PatternCase{"original/a/b.pth", {}, {"original/*"}, false},
        PatternCase{"config.json", {"*.json"}, {"config.*"}, false},
        PatternCase{"generation_config.json", {"*.json"}, {"config.*"}, true},
        // A pattern ending in "/" means everything under that directory.
        PatternCase{"original/a/b.pth", {}, {"original/"}, false},
        PatternCase{"original/x.pth", {"original/"}, {}, true},
        PatternCase{"originalx.pth", {"original/"}, {}, false},
        PatternCase{"original", {"original/"}, {}, false},
        // "?" is exactly one character.
        PatternCase{"a1.bin", {"a?.bin"}, {}, true}, PatternCase{"a12.bin", {"a?.bin"}, {}, false},
        PatternCase{"a/.bin", {"a?.bin"}, {}, true},
        // Bracket classes, negation, ranges, literal brackets.
        PatternCase{"model-00001-of-00002.safetensors", {"model-0000[0-9]-*"}, {}, true},
        PatternCase{"model-0000a-of-00002.safetensors", {"model-0000[0-9]-*"}, {}, false},
        PatternCase{"model-0000a", {"model-0000[!0-9]"}, {}, true},
        PatternCase{"model-00001", {"model-0000[!0-9]"}, {}, false},
        PatternCase{"a?b", {"a[?]b"}, {}, true}, PatternCase{"axb", {"a[?]b"}, {}, false},
        PatternCase{"a*b", {"a[*]b"}, {}, true}, PatternCase{"axb", {"a[*]b"}, {}, false},
        PatternCase{"[abc", {"[abc"}, {}, true},  // no closing bracket: literal
        PatternCase{"]", {"[]]"}, {}, true},      // a leading "]" is in the set
        PatternCase{"-", {"[a-]"}, {}, true},     // a trailing "-" is literal
        PatternCase{"b", {"[c-a]"}, {}, false},   // a reversed range is empty
        PatternCase{"b", {"[!c-a]"}, {}, true},
        // Several stars backtrack.
        PatternCase{"a/b/c.safetensors", {"*/*.safetensors"}, {}, true},
        PatternCase{"c.safetensors", {"*/*.safetensors"}, {}, false},
        PatternCase{"aXbXc", {"*b*c"}, {}, true}, PatternCase{"aXbXd", {"*b*c"}, {}, false},
        // Backslashes are path separators in patterns and paths.
        PatternCase{"dir\\a.json", {"dir/*.json"}, {}, true},
        PatternCase{"dir/a.json", {"dir\\*.json"}, {}, true},
        PatternCase{"dir/a.json", {}, {"dir\\"}, false}));

struct MapCase {
  long status;
  std::string code;     // X-Error-Code, "" = absent
  std::string message;  // X-Error-Message, "" = absent
  Reason reason;
  std::string mentions;  // a substring the error message must contain
};

class MapErrorTest : public ::testing::TestWithParam<MapCase> {};

HttpResponse Answer(long status, const std::string& code, const std::string& message) {
  HttpResponse r;
  r.status = status;
  if (!code.empty()) {
    r.headers.emplace_back("x-error-code", code);
  }
  if (!message.empty()) {
    r.headers.emplace_back("x-error-message", message);
  }
  return r;
}

TEST_P(MapErrorTest, MapsStatusAndErrorCode) {
  const MapCase& c = GetParam();
  Error e = HubClient::MapError(Answer(c.status, c.code, c.message), "revision 'v9'",
                                "https://hub.example", "org/name");
  EXPECT_EQ(ReasonName(e.reason), ReasonName(c.reason))
      << "status " << c.status << " code " << c.code << ": " << e.message;
  EXPECT_NE(e.message.find(c.mentions), std::string::npos) << e.message;
  EXPECT_FALSE(e.retry_after.has_value());
}

INSTANTIATE_TEST_SUITE_P(
    Table, MapErrorTest,
    ::testing::Values(
        MapCase{404, "RevisionNotFound", "Invalid rev id: v9", Reason::RevisionNotFound,
                "revision 'v9' not found in repository org/name at https://hub.example"},
        MapCase{404, "EntryNotFound", "Entry not found", Reason::RevisionNotFound,
                "not found in repository org/name"},
        MapCase{401, "GatedRepo", "Access to model org/name is restricted.", Reason::Unauthorized,
                "is gated: request access at https://hub.example/org/name and set a token"},
        MapCase{403, "GatedRepo", "not in the authorized list", Reason::Unauthorized,
                "not on its authorized list: request access at https://hub.example/org/name"},
        MapCase{403, "", "Access to this resource is disabled.", Reason::RepoNotFound,
                "is disabled"},
        MapCase{401, "RepoNotFound", "Repository not found", Reason::RepoNotFound,
                "repository org/name not found at https://hub.example"},
        MapCase{404, "RepoNotFound", "Repository not found", Reason::RepoNotFound,
                "repository org/name not found at https://hub.example"},
        MapCase{401, "", "Invalid credentials in Authorization header", Reason::Unauthorized,
                "rejected the token"},
        MapCase{401, "", "", Reason::RepoNotFound, "private or gated"},
        MapCase{400, "", "Invalid repo name", Reason::InvalidSpec, "Invalid repo name"},
        MapCase{403, "", "You don't have the rights", Reason::Unauthorized,
                "You don't have the rights"},
        MapCase{404, "", "", Reason::RepoNotFound, "repository org/name not found"},
        MapCase{408, "", "", Reason::NetworkError, "HTTP 408"},
        MapCase{429, "", "", Reason::RateLimited, "rate limited by https://hub.example"},
        MapCase{416, "", "", Reason::NetworkError, "range not satisfiable"},
        MapCase{500, "", "", Reason::NetworkError, "HTTP 500"},
        MapCase{502, "", "", Reason::NetworkError, "HTTP 502"},
        MapCase{503, "", "Service Unavailable", Reason::NetworkError, "Service Unavailable"},
        MapCase{504, "", "", Reason::NetworkError, "HTTP 504"},
        MapCase{418, "", "", Reason::NetworkError, "HTTP 418"}));

TEST(MapError, RetryAfterSecondsSetsRetryAfter) {
  HttpResponse r = Answer(429, "", "");
  r.headers.emplace_back("retry-after", "7");
  Error e = HubClient::MapError(r, "x", "https://hub.example", "org/name");
  EXPECT_EQ(e.reason, Reason::RateLimited);
  ASSERT_TRUE(e.retry_after.has_value());
  EXPECT_EQ(*e.retry_after, std::chrono::seconds(7));
}

TEST(MapError, RateLimitHeaderWithNothingRemainingSetsRetryAfter) {
  HttpResponse r = Answer(429, "", "");
  r.headers.emplace_back("ratelimit", "\"api\";r=0;t=55");
  Error e = HubClient::MapError(r, "x", "https://hub.example", "org/name");
  EXPECT_EQ(e.reason, Reason::RateLimited);
  ASSERT_TRUE(e.retry_after.has_value());
  EXPECT_EQ(*e.retry_after, std::chrono::seconds(55));
}

TEST(MapError, RateLimitHeaderWithQuotaLeftIsIgnored) {
  HttpResponse r = Answer(429, "", "");
  r.headers.emplace_back("ratelimit", "\"api\";r=3;t=55");
  r.headers.emplace_back("retry-after", "2");
  Error e = HubClient::MapError(r, "x", "https://hub.example", "org/name");
  ASSERT_TRUE(e.retry_after.has_value());
  EXPECT_EQ(*e.retry_after, std::chrono::seconds(2));
}

TEST(MapError, ServiceUnavailableKeepsRetryAfter) {
  HttpResponse r = Answer(503, "", "");
  r.headers.emplace_back("retry-after", "3");
  Error e = HubClient::MapError(r, "x", "https://hub.example", "org/name");
  EXPECT_EQ(e.reason, Reason::NetworkError);
  ASSERT_TRUE(e.retry_after.has_value());
  EXPECT_EQ(*e.retry_after, std::chrono::seconds(3));
}

TEST(MapError, GatedDatasetPointsAtTheDatasetPage) {
  Error e = HubClient::MapError(Answer(401, "GatedRepo", ""), "x", "https://hub.example",
                                "org/data", "dataset");
  EXPECT_EQ(e.reason, Reason::Unauthorized);
  EXPECT_NE(e.message.find("dataset repository org/data is gated"), std::string::npos) << e.message;
  EXPECT_NE(e.message.find("https://hub.example/datasets/org/data"), std::string::npos)
      << e.message;
}

TEST(ResolveUrl, EncodesRevisionFullyAndPathKeepingSlashes) {
  HubOptions options;
  options.endpoint = "https://hub.example/";  // the trailing slash is dropped
  HubClient client(options);
  EXPECT_EQ(client.options().endpoint, "https://hub.example");
  EXPECT_EQ(client.ResolveUrl("model", "org/name", "refs/pr/1", "dir/a b+c.json"),
            "https://hub.example/org/name/resolve/refs%2Fpr%2F1/dir/a%20b%2Bc.json");
  EXPECT_EQ(client.ResolveUrl("dataset", "org/data", "0123abc", "train/x.parquet"),
            "https://hub.example/datasets/org/data/resolve/0123abc/train/x.parquet");
  EXPECT_EQ(client.ResolveUrl("space", "org/app", "main", "app.py"),
            "https://hub.example/spaces/org/app/resolve/main/app.py");
}

TEST(HubClient, UnknownRepoTypeIsInvalidSpec) {
  HubClient client(HubOptions{});
  auto r = client.ResolveRevision("widget", "org/name", "main");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().reason, Reason::InvalidSpec);
  auto l = client.ListFiles("widget", "org/name", "main");
  ASSERT_FALSE(l);
  EXPECT_EQ(l.error().reason, Reason::InvalidSpec);
}

TEST(RepoFile, EtagIsSha256ForLfsAndBlobIdOtherwise) {
  RepoFile regular{"config.json", 10, "aaaa", std::nullopt};
  RepoFile lfs{"model.safetensors", 10, "bbbb", std::string("cccc")};
  EXPECT_EQ(regular.etag(), "aaaa");
  EXPECT_EQ(lfs.etag(), "cccc");
}

TEST(ValidateRepoPathTest, RefusesWhatCannotBeStoredSafely) {
  struct Case {
    std::string path;
    std::string why;  // "" = accepted
  };
  std::string deep;
  for (int i = 0; i < 41; ++i) {
    deep += std::string(100, 'd') + "/";
  }
  const std::vector<Case> cases = {
      {"config.json", ""},
      {"docs/notes with space+plus.txt", ""},
      {"original/.gitattributes", ""},  // a dot file is fine, only .git itself is not
      {std::string(255, 'x'), ""},
      {std::string("a\0b", 3), "a NUL byte"},
      {"a\nb", "a control character"},
      {std::string(256, 'x'), "a component longer than 255 bytes"},
      {deep + "f", "longer than 4096 bytes"},
      {".git/config", "a .git component"},
      {"sub/.git/HEAD", "a .git component"},
      {"/etc/passwd", "absolute"},
      {"a/../../x", "'..' component"},
      {"./x", "'.' or '..' component"},
      {"a//b", "an empty"},
      {"a\\b", "a backslash"},
      {"", "empty"},
  };
  for (const auto& c : cases) {
    auto r = ValidateRepoPath(c.path);
    if (c.why.empty()) {
      EXPECT_TRUE(r) << PrintablePath(c.path) << ": " << r.error().message;
      continue;
    }
    ASSERT_FALSE(r) << PrintablePath(c.path);
    EXPECT_EQ(r.error().reason, Reason::InvalidSpec);
    EXPECT_NE(r.error().message.find(c.why), std::string::npos) << r.error().message;
    EXPECT_EQ(r.error().message.find('\n'), std::string::npos) << "the message is one line";
  }
}

TEST(ValidateRepoPathTest, MessagesShowControlBytesEscapedAndLongPathsShortened) {
  EXPECT_EQ(PrintablePath(std::string("a\0b\nc\\d", 7)), "a\\x00b\\x0ac\\x5cd");
  std::string shown = PrintablePath(std::string(5000, 'x'));
  EXPECT_LT(shown.size(), 200U);
  EXPECT_NE(shown.find("(5000 bytes)"), std::string::npos);
}

}  // namespace
}  // namespace modelcache::fetch
