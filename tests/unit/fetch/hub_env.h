#pragma once

// A FakeHub with a few repos, shared by the hub client and downloader tests:
//   org/model    public; main, tag v1, branch feature/x (a revision with a slash)
//   org/private  private, token "hf_good"
//   org/gated    gated (manual), token "hf_good"
//   org/data     a public dataset
// Every repo holds a regular file, an LFS file (served through the CDN) and nested paths.

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "common/http_client.h"
#include "common/sha256.h"
#include "tests/common/test_util.h"
#include "fetch/hub_client.h"
#include "tests/fixtures/hub/fake_hub.h"

namespace modelcache::fetch {

using test_util::RandomBytes;

inline void WriteTestFile(const std::string& path, const std::string& content) {
  std::filesystem::create_directories(std::filesystem::path(path).parent_path());
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(content.data(), static_cast<std::streamsize>(content.size()));
}

inline std::string ReadTestFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// This thread's curl handle keeps its connection to a test server alive, and stopping the server
// waits for it (about a second); a last "Connection: close" request to `url` lets it go at once.
inline void CloseKeepAlive(const std::string& url) {
  HttpRequest bye;
  bye.url = url;
  bye.headers.emplace_back("Connection", "close");
  (void)HttpClient::Send(bye);
}

// One hub per test suite: stopping a hub waits for its keep-alive connections (about a second),
// which per test would make the binary slow. Each test starts with no faults, fresh counters, the
// default page size and a scratch directory of its own.
class HubTest : public ::testing::Test {
 protected:
  static constexpr size_t kWeightsSize = 300 * 1024;
  static constexpr const char* kGoodToken = "hf_good";
  static constexpr const char* kOtherToken = "hf_other";

  static void SetUpTestSuite() {
    std::string tmpl = ::testing::TempDir() + "fetch_test.XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    root_ = new std::string(tmpl);
    weights_ = new std::string(RandomBytes(kWeightsSize, 7));
    config_ = new std::string(R"({"architectures": ["LlamaForCausalLM"], "hidden_size": 64})");
    tokenizer_ = new std::string(40 * 1024, 't');
    MakeTree("main", *config_);
    MakeTree("v1", R"({"hidden_size": 32})");
    MakeTree("feature", R"({"hidden_size": 16})");

    hub_ = new testing::FakeHub();
    // kOtherToken is known to the hub (it has access to org/other) but not to the repos below.
    hub_->AddRepo(Spec("model", "org/other", {{"main", Dir("main")}}, {kOtherToken}));
    hub_->AddRepo(Spec("model", "org/model",
                       {{"main", Dir("main")}, {"v1", Dir("v1")}, {"feature/x", Dir("feature")}}));
    testing::FakeRepoSpec private_repo =
        Spec("model", "org/private", {{"main", Dir("main")}}, {kGoodToken});
    private_repo.is_private = true;
    hub_->AddRepo(private_repo);
    testing::FakeRepoSpec gated = Spec("model", "org/gated", {{"main", Dir("main")}}, {kGoodToken});
    gated.gated = "manual";
    hub_->AddRepo(gated);
    hub_->AddRepo(Spec("dataset", "org/data", {{"main", Dir("v1")}}));
    auto started = hub_->Start();
    ASSERT_TRUE(started) << started.error().ToString();
  }

  static void TearDownTestSuite() {
    CloseKeepAlive(hub_->url() + "/api/whoami-v2");
    delete hub_;
    hub_ = nullptr;
    std::error_code ec;
    std::filesystem::remove_all(*root_, ec);
    delete root_;
    delete weights_;
    delete config_;
    delete tokenizer_;
  }

  void SetUp() override {
    ASSERT_NE(hub_, nullptr);
    hub_->ClearFaults();
    hub_->ResetCounters();
    hub_->SetTreePageSize(50);
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    scratch_ = *root_ + "/scratch/" + info->name();
    std::filesystem::create_directories(scratch_);
  }

  static testing::FakeRepoSpec Spec(const std::string& type, const std::string& id,
                                    std::map<std::string, std::string> refs,
                                    std::vector<std::string> tokens = {}) {
    testing::FakeRepoSpec spec;
    spec.type = type;
    spec.id = id;
    spec.refs = std::move(refs);
    spec.tokens = std::move(tokens);
    return spec;
  }

  static testing::Fault MakeFault(testing::Fault::Kind kind, const std::string& glob, int count) {
    testing::Fault f;
    f.kind = kind;
    f.path_glob = glob;
    f.count = count;
    return f;
  }

  static testing::Fault ApiStatus(const std::string& glob, int status, int count,
                                  int retry_after_seconds = 1) {
    testing::Fault f = MakeFault(testing::Fault::Kind::Status, glob, count);
    f.status = status;
    f.retry_after_seconds = retry_after_seconds;
    f.api = true;
    return f;
  }

  static std::string Dir(const std::string& name) { return *root_ + "/src/" + name; }

  static void MakeTree(const std::string& name, const std::string& config) {
    WriteTestFile(Dir(name) + "/config.json", config);
    WriteTestFile(Dir(name) + "/model.safetensors", *weights_);
    WriteTestFile(Dir(name) + "/sub/dir/tokenizer.json", *tokenizer_);
    WriteTestFile(Dir(name) + "/with space/a+b.txt", "plus and space");
  }

  static HubOptions Options(const std::string& token = "") {
    HubOptions o;
    o.endpoint = hub_->url();
    o.token = token;
    o.max_attempts = 4;
    o.backoff_base = std::chrono::milliseconds(10);
    o.backoff_cap = std::chrono::milliseconds(40);
    return o;
  }

  // Plain pointers: gtest suites keep shared state in statics, and these must not be destroyed
  // after main returns.
  static inline std::string* root_ = nullptr;
  static inline std::string* weights_ = nullptr;
  static inline std::string* config_ = nullptr;
  static inline std::string* tokenizer_ = nullptr;
  static inline testing::FakeHub* hub_ = nullptr;
  std::string scratch_;
};

}  // namespace modelcache::fetch
