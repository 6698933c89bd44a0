// HubClient against the FakeHub: revisions, tree pagination, access errors, retries.

#include "fetch/hub_client.h"

#include <algorithm>
#include <map>
#include <mutex>
#include <thread>

#include <gtest/gtest.h>
#include <httplib.h>

#include "tests/unit/fetch/hub_env.h"

namespace modelcache::fetch {
namespace {

using HubClientTest = HubTest;

TEST_F(HubClientTest, ResolvesBranchTagHeadAndCommits) {
  HubClient client(Options());
  std::string main_commit = hub_->CommitOf("model", "org/model", "main");
  std::string v1_commit = hub_->CommitOf("model", "org/model", "v1");
  ASSERT_EQ(main_commit.size(), 40u);
  ASSERT_NE(main_commit, v1_commit);

  auto main = client.ResolveRevision("model", "org/model", "main");
  ASSERT_TRUE(main) << main.error().ToString();
  EXPECT_EQ(*main, main_commit);

  auto defaulted = client.ResolveRevision("model", "org/model", "");
  ASSERT_TRUE(defaulted) << defaulted.error().ToString();
  EXPECT_EQ(*defaulted, main_commit);

  auto head = client.ResolveRevision("model", "org/model", "HEAD");
  ASSERT_TRUE(head) << head.error().ToString();
  EXPECT_EQ(*head, main_commit);

  auto tag = client.ResolveRevision("model", "org/model", "v1");
  ASSERT_TRUE(tag) << tag.error().ToString();
  EXPECT_EQ(*tag, v1_commit);

  auto full = client.ResolveRevision("model", "org/model", v1_commit);
  ASSERT_TRUE(full) << full.error().ToString();
  EXPECT_EQ(*full, v1_commit);

  auto short_commit = client.ResolveRevision("model", "org/model", v1_commit.substr(0, 7));
  ASSERT_TRUE(short_commit) << short_commit.error().ToString();
  EXPECT_EQ(*short_commit, v1_commit);
}

TEST_F(HubClientTest, ResolvesRevisionWithSlashEncoded) {
  HubClient client(Options());
  auto r = client.ResolveRevision("model", "org/model", "feature/x");
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(*r, hub_->CommitOf("model", "org/model", "feature/x"));
  // quote(revision, safe=""): the slash travels as %2F, and the fixture counts decoded paths.
  EXPECT_EQ(hub_->Requests("/api/models/org/model/revision/feature/x"), 1);
}

TEST_F(HubClientTest, ResolvesDatasetRevision) {
  HubClient client(Options());
  auto r = client.ResolveRevision("dataset", "org/data", "main");
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(*r, hub_->CommitOf("dataset", "org/data", "main"));
  EXPECT_EQ(hub_->Requests("/api/datasets/org/data/revision/"), 1);
}

TEST_F(HubClientTest, UnknownRevisionIsRevisionNotFound) {
  HubClient client(Options());
  auto r = client.ResolveRevision("model", "org/model", "no-such-branch");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().reason, Reason::RevisionNotFound) << r.error().ToString();
  EXPECT_NE(r.error().message.find("no-such-branch"), std::string::npos);
  EXPECT_EQ(hub_->Requests("/api/models/org/model/revision/"), 1);  // permanent: not retried
}

TEST_F(HubClientTest, UnknownRepoIsRepoNotFoundNamingRepoAndEndpoint) {
  HubClient client(Options());
  auto r = client.ResolveRevision("model", "org/missing", "main");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().reason, Reason::RepoNotFound) << r.error().ToString();
  EXPECT_NE(r.error().message.find("repository org/missing not found at " + hub_->url()),
            std::string::npos)
      << r.error().message;
  EXPECT_EQ(hub_->Requests("/api/models/org/missing"), 1);
}

TEST_F(HubClientTest, PrivateRepoNeedsAToken) {
  auto anonymous = HubClient(Options()).ResolveRevision("model", "org/private", "main");
  ASSERT_FALSE(anonymous);
  EXPECT_EQ(anonymous.error().reason, Reason::RepoNotFound) << anonymous.error().ToString();

  auto no_access = HubClient(Options(kOtherToken)).ResolveRevision("model", "org/private", "main");
  ASSERT_FALSE(no_access);
  EXPECT_EQ(no_access.error().reason, Reason::RepoNotFound) << no_access.error().ToString();
  EXPECT_EQ(no_access.error().message.find(kOtherToken), std::string::npos);

  HubClient with_token(Options(kGoodToken));
  auto ok = with_token.ResolveRevision("model", "org/private", "main");
  ASSERT_TRUE(ok) << ok.error().ToString();
  EXPECT_EQ(*ok, hub_->CommitOf("model", "org/private", "main"));
  auto files = with_token.ListFiles("model", "org/private", *ok);
  ASSERT_TRUE(files) << files.error().ToString();
  EXPECT_EQ(files->size(), 4u);
}

TEST_F(HubClientTest, InvalidTokenIsUnauthorizedAndNotInTheMessage) {
  auto r = HubClient(Options("hf_wrong_secret")).ResolveRevision("model", "org/model", "main");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().reason, Reason::Unauthorized) << r.error().ToString();
  EXPECT_EQ(r.error().message.find("hf_wrong_secret"), std::string::npos) << r.error().message;
}

TEST_F(HubClientTest, GatedRepoInfoAndTreeArePublic) {
  HubClient client(Options());
  auto commit = client.ResolveRevision("model", "org/gated", "main");
  ASSERT_TRUE(commit) << commit.error().ToString();
  auto files = client.ListFiles("model", "org/gated", *commit);
  ASSERT_TRUE(files) << files.error().ToString();
  EXPECT_EQ(files->size(), 4u);
}

TEST_F(HubClientTest, ListsEveryFileAcrossPagesSkippingDirectories) {
  hub_->SetTreePageSize(2);
  HubClient client(Options());
  std::string commit = hub_->CommitOf("model", "org/model", "main");
  auto files = client.ListFiles("model", "org/model", commit);
  ASSERT_TRUE(files) << files.error().ToString();
  // Directory entries ("sub", "sub/dir", "with space") are skipped, so more than two pages were
  // needed to see the four files.
  EXPECT_GE(hub_->Requests("/api/models/org/model/tree/"), 3);

  std::map<std::string, RepoFile> by_path;
  for (const auto& f : *files) {
    by_path[f.path] = f;
  }
  ASSERT_EQ(by_path.size(), 4u);
  ASSERT_EQ(files->size(), 4u);

  const RepoFile& weights = by_path.at("model.safetensors");
  EXPECT_EQ(weights.size, kWeightsSize);
  ASSERT_TRUE(weights.lfs_sha256.has_value());
  EXPECT_EQ(*weights.lfs_sha256, Sha256Hex(*weights_));
  EXPECT_EQ(weights.etag(), hub_->EtagOf("model", "org/model", commit, "model.safetensors"));
  EXPECT_EQ(weights.blob_id.size(), 40u);  // the pointer file's blob sha1

  const RepoFile& config = by_path.at("config.json");
  EXPECT_EQ(config.size, config_->size());
  EXPECT_FALSE(config.lfs_sha256.has_value());
  Hasher git = GitBlobHasher(config_->size());
  git.Update(*config_);
  EXPECT_EQ(config.blob_id, git.FinalHex());
  EXPECT_EQ(config.etag(), hub_->EtagOf("model", "org/model", commit, "config.json"));

  EXPECT_EQ(by_path.at("sub/dir/tokenizer.json").size, tokenizer_->size());
  EXPECT_EQ(by_path.count("with space/a+b.txt"), 1u);
}

TEST_F(HubClientTest, ListsDatasetFiles) {
  HubClient client(Options());
  auto files =
      client.ListFiles("dataset", "org/data", hub_->CommitOf("dataset", "org/data", "main"));
  ASSERT_TRUE(files) << files.error().ToString();
  EXPECT_EQ(files->size(), 4u);
}

TEST_F(HubClientTest, ServerErrorsAreRetried) {
  hub_->AddFault(ApiStatus("/api/models/org/model/revision/*", 500, 2));
  HubClient client(Options());
  auto r = client.ResolveRevision("model", "org/model", "main");
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(*r, hub_->CommitOf("model", "org/model", "main"));
  EXPECT_EQ(hub_->Requests("/api/models/org/model/revision/"), 3);
}

TEST_F(HubClientTest, PersistentServerErrorsAreNetworkErrorAfterMaxAttempts) {
  hub_->AddFault(ApiStatus("/api/models/org/model/tree/*", 503, -1));
  HubClient client(Options());
  auto r = client.ListFiles("model", "org/model", hub_->CommitOf("model", "org/model", "main"));
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().reason, Reason::NetworkError) << r.error().ToString();
  EXPECT_EQ(hub_->Requests("/api/models/org/model/tree/"), Options().max_attempts);
}

TEST_F(HubClientTest, RetryAfterLongerThanTheCapIsReturnedNotWaited) {
  hub_->AddFault(ApiStatus("/api/models/org/model/revision/*", 429, 1, 30));
  HubClient client(Options());
  auto r = client.ResolveRevision("model", "org/model", "main");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().reason, Reason::RateLimited) << r.error().ToString();
  ASSERT_TRUE(r.error().retry_after.has_value());
  EXPECT_EQ(*r.error().retry_after, std::chrono::seconds(30));
  EXPECT_EQ(hub_->Requests("/api/models/org/model/revision/"), 1);
}

TEST_F(HubClientTest, RetryAfterWithinTheCapIsWaitedThenRetried) {
  hub_->AddFault(ApiStatus("/api/models/org/model/revision/*", 429, 1, 1));
  HubOptions options = Options();
  options.backoff_cap = std::chrono::seconds(2);
  HubClient client(options);
  auto r = client.ResolveRevision("model", "org/model", "main");
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(hub_->Requests("/api/models/org/model/revision/"), 2);
}

TEST_F(HubClientTest, UnreachableEndpointIsNetworkError) {
  HubOptions options = Options();
  // A port nothing listens on: stop a hub of our own and reuse its address.
  testing::FakeHub dead;
  ASSERT_TRUE(dead.Start());
  options.endpoint = dead.url();
  dead.Stop();
  auto r = HubClient(options).ResolveRevision("model", "org/model", "main");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().reason, Reason::NetworkError) << r.error().ToString();
}

TEST_F(HubClientTest, StopRequestedIsCancelled) {
  std::stop_source stop;
  stop.request_stop();
  auto r = HubClient(Options()).ResolveRevision("model", "org/model", "main", stop.get_token());
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().reason, Reason::Cancelled) << r.error().ToString();
}

// A plain server for what the FakeHub does not do: a renamed repo (307 with a relative Location)
// and tree pages linked with relative URLs.
class HubApiServerTest : public ::testing::Test {
 protected:
  static constexpr const char* kCommit = "0123456789abcdef0123456789abcdef01234567";

  void SetUp() override {
    server_.Get(R"(/api/models/old/name/(revision|tree)/(.*))", [](const httplib::Request& req,
                                                                   httplib::Response& res) {
      res.status = 307;
      std::string target = req.target;
      res.set_header("Location", "/api/models/new/name" +
                                     target.substr(std::string("/api/models/old/name").size()));
    });
    server_.Get(R"(/api/models/new/name/revision/main)",
                [this](const httplib::Request& req, httplib::Response& res) {
                  Record(req);
                  res.set_content(std::string(R"({"id":"new/name","sha":")") + kCommit + "\"}",
                                  "application/json");
                });
    server_.Get(R"(/api/models/new/name/tree/([0-9a-f]+))",
                [this](const httplib::Request& req, httplib::Response& res) {
                  Record(req);
                  std::string page = req.has_param("cursor") ? req.get_param_value("cursor") : "";
                  if (page.empty()) {
                    res.set_header("Link", std::string("</api/models/new/name/tree/") + kCommit +
                                               "?recursive=true&expand=false&cursor=2>; "
                                               "rel=\"next\"");
                    res.set_content(R"([{"type":"directory","oid":"aa","size":0,"path":"d"},)"
                                    R"({"type":"file","oid":")" + std::string(40, 'b') +
                                        R"(","size":3,"path":"d/a.txt"}])",
                                    "application/json");
                  } else {
                    res.set_content(R"([{"type":"file","oid":")" + std::string(40, 'c') +
                                        R"(","size":9,"path":"w.bin","lfs":{"oid":")" +
                                        std::string(64, 'd') + R"(","size":9,"pointerSize":130}}])",
                                    "application/json");
                  }
                });
    server_.set_keep_alive_timeout(1);
    port_ = server_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    while (!server_.is_running()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }
  void TearDown() override {
    CloseKeepAlive(Options().endpoint + "/bye");
    server_.stop();
    thread_.join();
  }
  void Record(const httplib::Request& req) {
    std::lock_guard lock(mu_);
    auth_.push_back(req.get_header_value("Authorization"));
  }
  HubOptions Options() const {
    HubOptions o;
    o.endpoint = "http://127.0.0.1:" + std::to_string(port_);
    o.token = "hf_secret";
    o.max_attempts = 2;
    o.backoff_base = std::chrono::milliseconds(10);
    return o;
  }

  httplib::Server server_;
  int port_ = 0;
  std::thread thread_;
  std::mutex mu_;
  std::vector<std::string> auth_;
};

TEST_F(HubApiServerTest, RenamedRepoRedirectIsFollowedWithTheToken) {
  auto r = HubClient(Options()).ResolveRevision("model", "old/name", "main");
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(*r, kCommit);
  std::lock_guard lock(mu_);
  EXPECT_EQ(auth_, std::vector<std::string>{"Bearer hf_secret"});
}

TEST_F(HubApiServerTest, FollowsRelativeNextLinksAndSkipsDirectories) {
  auto files = HubClient(Options()).ListFiles("model", "old/name", kCommit);
  ASSERT_TRUE(files) << files.error().ToString();
  ASSERT_EQ(files->size(), 2u);
  EXPECT_EQ((*files)[0].path, "d/a.txt");
  EXPECT_EQ((*files)[0].blob_id, std::string(40, 'b'));
  EXPECT_FALSE((*files)[0].lfs_sha256.has_value());
  EXPECT_EQ((*files)[1].path, "w.bin");
  EXPECT_EQ((*files)[1].size, 9u);
  EXPECT_EQ((*files)[1].etag(), std::string(64, 'd'));
  std::lock_guard lock(mu_);
  EXPECT_EQ(auth_.size(), 2u);
}

}  // namespace
}  // namespace modelcache::fetch
