// Kubernetes mode with an S3 store: `--s3-secret` names a Kubernetes Secret, and the daemon
// (the real binary, against the API server imitation, the Hub imitation and the shared radosgw
// of the ctest fixture, FIXTURES_REQUIRED radosgw) publishes with credentials that come only from
// that Secret: there is no AWS_* variable in its environment and no AWS file in its HOME.

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "common/files.h"
#include "tests/fixtures/hub/fake_hub.h"
#include "tests/fixtures/kube/fake_apiserver.h"
#include "tests/integration/harness.h"
#include "tests/integration/kube_objects.h"
#include "tests/integration/radosgw_env.h"

namespace modelcache::itest {
namespace {

namespace fs = std::filesystem;
using modelcache::testing::ApiAnswer;
using modelcache::testing::FakeApiServer;
using modelcache::testing::FakeRepoSpec;
using nlohmann::json;
using std::chrono::milliseconds;
using std::chrono::seconds;

class S3KubeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto gw = LoadRadosGw();
    ASSERT_TRUE(gw) << "no radosgw: run through ctest (fixture radosgw_start), or set "
                       "MC_RADOSGW_ENV to the file tests/fixtures/radosgw/ctest-fixture.sh wrote";
    gw_ = *gw;
    // The daemon inherits this process's environment: credentials a developer exported must not
    // let it succeed without the Secret.
    for (const char* v : {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                          "AWS_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL",
                          "AWS_ENDPOINT_URL_S3", "AWS_CONFIG_FILE",
                          "AWS_SHARED_CREDENTIALS_FILE"}) {
      ::unsetenv(v);  // NOLINT(concurrency-mt-unsafe): before any thread of this test starts
    }
    prefix_ = "kube-" + UniqueSuffix();
    for (char& c : prefix_) {
      if (c == '.') {
        c = '-';
      }
    }
    fs::create_directories(tmp_ / "home");
    ASSERT_TRUE(hub_.Start());
    api_.AddToken(kControllerToken);
    ASSERT_TRUE(api_.Start());
    // The context's namespace is the daemon's own: where `--s3-secret NAME` is looked up.
    std::ofstream(tmp_ / "kubeconfig")
        << "apiVersion: v1\nkind: Config\n"
        << "clusters:\n- name: fake\n  cluster: {server: \"" << api_.url() << "\"}\n"
        << "users:\n- name: controller\n  user: {token: " << kControllerToken << "}\n"
        << "contexts:\n- name: fake\n"
        << "  context: {cluster: fake, user: controller, namespace: modelcache-system}\n"
        << "current-context: fake\n";
  }

  std::string store_uri() const { return "s3://" + gw_.bucket + "/" + prefix_; }

  Daemon::Options DaemonOptions(const std::string& s3_secret) const {
    Daemon::Options o;
    o.store = tmp_ / "cache";  // the local store that stages; the artifacts go to S3
    o.hf_endpoint = hub_.url();
    o.extra_args = {"--kubernetes",      "--kubeconfig", tmp_ / "kubeconfig",
                    "--retry-base-delay", "20ms",        "--resync-period",
                    "30s",               "--s3-secret",  s3_secret,
                    "--allowed-stores",  store_uri()};
    o.env = {{"HOME", tmp_ / "home"}};
    return o;
  }

  json Get(const std::string& name) {
    ApiAnswer a = api_.GetModelCache("default", name);
    return a.status == 200 ? a.body : json();
  }

  // Polls default/<name> until its Ready condition satisfies `pred`; returns the object.
  json WaitReadyCondition(const std::string& name, const std::function<bool(const json&)>& pred,
                          Daemon& daemon) {
    json last;
    bool ok = WaitFor(
        [&] {
          last = Get(name);
          return !last.is_null() && pred(ReadyCondition(last));
        },
        seconds(60));
    EXPECT_TRUE(ok) << last.dump() << "\n" << daemon.Log();
    return last;
  }

  // Sets spec.force of default/<name> (a new generation: reconciled at once), again on conflict.
  void Force(const std::string& name, int64_t force) {
    for (int i = 0; i < 20; ++i) {
      json current = Get(name);
      current["spec"]["force"] = force;
      ApiAnswer a = api_.Call(
          "PUT", "/apis/modelcache.dev/v1alpha1/namespaces/default/modelcaches/" + name, current);
      if (a.status == 200) {
        return;
      }
      ASSERT_EQ(a.status, 409) << a.body.dump();
    }
    FAIL() << "update of " << name << " kept conflicting";
  }

  // Everything the daemon showed: the object (status), the Events and its log.
  std::string Shown(const std::string& name, Daemon& daemon) {
    return Get(name).dump() + api_.ListEvents("default").body.dump() + daemon.Log();
  }

  RadosGw gw_;
  std::string prefix_;
  TempDir tmp_;
  testing::FakeHub hub_;
  FakeApiServer api_;
};

TEST_F(S3KubeTest, CredentialsComeOnlyFromTheNamedSecretAndNeverShow) {
  std::string repo = tmp_ / "repos/org/s3-kube/main";
  auto files = SmallModelFiles(300000, 91);
  WriteTree(repo, files);
  FakeRepoSpec spec;
  spec.id = "org/s3-kube";
  spec.refs["main"] = repo;
  hub_.AddRepo(spec);
  json object = {{"apiVersion", "modelcache.dev/v1alpha1"},
                 {"kind", "ModelCache"},
                 {"metadata", {{"name", "s3-kube"}, {"namespace", "default"}}},
                 {"spec",
                  {{"source", {{"repo", "org/s3-kube"}}}, {"storage", {{"uri", store_uri()}}}}}};
  ASSERT_EQ(api_.CreateModelCache(object).status, 201);

  {
    // NAMESPACE/NAME of a Secret that does not exist yet.
    Daemon daemon(DaemonOptions("ops/s3-creds"));
    daemon.Start();
    json missing = WaitReadyCondition(
        "s3-kube",
        [](const json& c) {
          return c.value("reason", "") == "InvalidSpec" &&
                 c.value("message", "").find("secret ops/s3-creds not found") != std::string::npos;
        },
        daemon);
    EXPECT_NE(ReadyCondition(missing).value("message", "").find(store_uri()), std::string::npos);

    // It appears with half a key pair: the missing key is named (a spec change makes the
    // daemon look at once instead of at the 30 s recheck).
    ASSERT_EQ(api_.CreateSecret("ops", "s3-creds", {{"AWS_ACCESS_KEY_ID", gw_.access_key}}).status,
              201);
    Force("s3-kube", 1);
    WaitReadyCondition(
        "s3-kube",
        [](const json& c) {
          return c.value("reason", "") == "InvalidSpec" &&
                 c.value("message", "").find("Secret ops/s3-creds (--s3-secret) has no key "
                                             "AWS_SECRET_ACCESS_KEY") != std::string::npos;
        },
        daemon);
    EXPECT_EQ(daemon.Terminate(), 0);
  }

  // NAME: the Secret in the daemon's namespace (the kubeconfig context's), holding the endpoint
  // and region too; first with a wrong secret key.
  const std::string wrong = "WRONGsecretWRONGsecretWRONGsecret0000000";
  ASSERT_EQ(api_.CreateSecret("modelcache-system", "modelcache-s3",
                              {{"AWS_ACCESS_KEY_ID", gw_.access_key},
                               {"AWS_SECRET_ACCESS_KEY", wrong},
                               {"AWS_REGION", gw_.region},
                               {"AWS_ENDPOINT_URL", gw_.endpoint}})
                .status,
            201);
  Daemon daemon(DaemonOptions("modelcache-s3"));
  daemon.Start();
  WaitReadyCondition(
      "s3-kube",
      [](const json& c) {
        return c.value("reason", "") == "StorageError" &&
               c.value("message", "").find("SignatureDoesNotMatch") != std::string::npos;
      },
      daemon);
  EXPECT_EQ(Shown("s3-kube", daemon).find(wrong), std::string::npos);

  // Rotated: a later retry reads the new data and publishes.
  std::string path = "/api/v1/namespaces/modelcache-system/secrets/modelcache-s3";
  json secret = api_.Call("GET", path).body;
  secret["data"].erase("AWS_SECRET_ACCESS_KEY");
  secret["stringData"] = {{"AWS_SECRET_ACCESS_KEY", gw_.secret_key + "\n"}};
  ASSERT_EQ(api_.Call("PUT", path, secret).status, 200);
  json ready = WaitReadyCondition(
      "s3-kube", [](const json& c) { return c.value("status", "") == "True"; }, daemon);
  ASSERT_TRUE(ready.contains("status") && ready["status"].contains("artifact")) << ready.dump();
  std::string uri = ready["status"]["artifact"].value("uri", "");
  // Kubernetes mode's default artifact name carries the namespace.
  EXPECT_EQ(uri.rfind(store_uri() + "/artifacts/default--s3-kube/", 0), 0U) << uri;
  std::string shown = Shown("s3-kube", daemon);
  EXPECT_EQ(shown.find(wrong), std::string::npos);
  EXPECT_EQ(shown.find(gw_.secret_key), std::string::npos);

  // What was published is the Hub's bytes (read back with the fixture's keys).
  std::string pulled = tmp_ / "pulled";
  auto pull = RunModelcache({"pull", uri, pulled},
                            {{"AWS_ACCESS_KEY_ID", gw_.access_key},
                             {"AWS_SECRET_ACCESS_KEY", gw_.secret_key},
                             {"AWS_REGION", gw_.region},
                             {"AWS_ENDPOINT_URL", gw_.endpoint},
                             {"HOME", tmp_ / "home"}});
  ASSERT_EQ(pull.exit_code, 0) << pull.err;
  for (const auto& [name, content] : files) {
    std::ifstream in(pulled + "/" + name, std::ios::binary);
    EXPECT_EQ(std::string(std::istreambuf_iterator<char>(in), {}), content) << name;
  }
  EXPECT_EQ(daemon.Terminate(), 0);
}

}  // namespace
}  // namespace modelcache::itest
