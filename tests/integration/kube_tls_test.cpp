// Kubernetes mode over TLS: the real daemon (`modelcache run --kubernetes`) against the API
// server imitation serving HTTPS with a throwaway CA, as a real cluster does. The kubeconfig's
// certificate-authority-data, certificate-authority (a file) and insecure-skip-tls-verify are
// each used for real connections; a server certificate from an unknown CA stops the daemon at
// start with the verification problem named.

#include <fstream>
#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "tests/fixtures/hub/fake_hub.h"
#include "tests/fixtures/kube/fake_apiserver.h"
#include "tests/fixtures/kube/test_tls.h"
#include "tests/integration/harness.h"

namespace modelcache::itest {
namespace {

using modelcache::testing::ApiAnswer;
using modelcache::testing::FakeApiServer;
using modelcache::testing::FakeApiServerOptions;
using modelcache::testing::FakeHub;
using modelcache::testing::FakeRepoSpec;
using nlohmann::json;

// What manifests/'s ClusterRole grants the controller.
// What manifests/kubernetes/base/rbac.yaml grants (the fleet aggregate reads Nodes and
// ModelCacheNodes).
const std::vector<std::string> kControllerResources = {
    "modelcaches", "secrets", "events", "leases", "nodes", "modelcachenodes"};

FakeApiServerOptions TlsOptions() {
  FakeApiServerOptions o;
  o.tls = true;
  o.bookmark_interval = std::chrono::milliseconds(200);
  return o;
}

class KubeTlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(hub_.Start());
    ASSERT_TRUE(api_.Start());
    ASSERT_EQ(api_.url().rfind("https://", 0), 0u);
  }

  // A kubeconfig at tmp_/`file` for the imitation with `token` and the TLS settings
  // `cluster_tls` (YAML lines of the cluster map, each indented by four spaces).
  std::string WriteKubeconfig(const std::string& file, const std::string& token,
                              const std::string& cluster_tls) {
    std::ofstream(tmp_ / file) << "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n"
                               << "  cluster:\n    server: \"" << api_.url() << "\"\n"
                               << cluster_tls << "users:\n- name: u\n  user: {token: " << token
                               << "}\ncontexts:\n- name: c\n  context: {cluster: c, user: u}\n"
                               << "current-context: c\n";
    return tmp_ / file;
  }

  std::string CaData(const std::string& pem) const {
    return "    certificate-authority-data: " + testing::Base64(pem) + "\n";
  }

  Daemon::Options DaemonOptions(const std::string& kubeconfig) const {
    Daemon::Options o;
    o.store = tmp_ / "store";
    o.hf_endpoint = hub_.url();
    o.extra_args = {"--kubernetes", "--kubeconfig", kubeconfig, "--retry-base-delay", "20ms"};
    return o;
  }

  TempDir tmp_;
  FakeHub hub_;
  FakeApiServer api_{TlsOptions()};
};

TEST_F(KubeTlsTest, CaDataAndATokenMakeAResourceReady) {
  std::string repo_dir = tmp_ / "repos/org/model/main";
  WriteTree(repo_dir, SmallModelFiles(20000, 7));
  FakeRepoSpec spec;
  spec.id = "org/model";
  spec.refs["main"] = repo_dir;
  hub_.AddRepo(spec);
  api_.AddToken("controller", kControllerResources);

  Daemon daemon(DaemonOptions(WriteKubeconfig("kubeconfig", "controller", CaData(api_.ca_pem()))));
  daemon.Start();
  ApiAnswer created =
      api_.CreateModelCache({{"apiVersion", "modelcache.dev/v1alpha1"},
                             {"kind", "ModelCache"},
                             {"metadata", {{"name", "model"}, {"namespace", "default"}}},
                             {"spec", {{"source", {{"repo", "org/model"}}}}}});
  ASSERT_EQ(created.status, 201) << created.body.dump();
  json last;
  ASSERT_TRUE(WaitFor(
      [&] {
        last = api_.GetModelCache("default", "model").body;
        return last.contains("status") && last["status"].value("phase", "") == "Ready";
      },
      std::chrono::seconds(60)))
      << last.dump() << "\n"
      << daemon.Log();
  // The status, the finalizer and the watch all went over TLS with the token.
  EXPECT_GT(api_.requests_by("controller", "modelcaches"), 0u);
  EXPECT_GT(api_.stats().status_updates, 0u);
  EXPECT_EQ(api_.stats().unauthorized, 0u);
  EXPECT_EQ(api_.stats().forbidden, 0u);
  EXPECT_EQ(daemon.Terminate(), 0);
}

TEST_F(KubeTlsTest, CaFileRelativeToTheKubeconfigAndInsecureSkipVerifyConnectToo) {
  std::ofstream(tmp_ / "ca.crt") << api_.ca_pem();
  struct Case {
    std::string token;
    std::string cluster_tls;
  };
  for (const Case& c : {Case{"with-ca-file", "    certificate-authority: ca.crt\n"},
                        Case{"insecure", "    insecure-skip-tls-verify: true\n"}}) {
    SCOPED_TRACE(c.token);
    api_.AddToken(c.token, kControllerResources);
    Daemon daemon(DaemonOptions(WriteKubeconfig(c.token + ".kubeconfig", c.token, c.cluster_tls)));
    daemon.Start();
    // The initial list, then the watch: the daemon is past its start-up and synced.
    EXPECT_TRUE(WaitFor([&] { return api_.requests_by(c.token, "modelcaches") >= 2; }))
        << daemon.Log();
    EXPECT_EQ(daemon.Terminate(), 0) << daemon.Log();
  }
}

TEST_F(KubeTlsTest, AServerCertificateFromAnotherCaFailsAtStartNamingTheProblem) {
  api_.AddToken("controller", kControllerResources);
  auto other = testing::MakeTestCertificates();
  ASSERT_TRUE(other) << other.error().ToString();
  for (const std::string& cluster_tls : {CaData(other->ca_pem), std::string()}) {
    SCOPED_TRACE(cluster_tls.empty() ? "the system store" : "another CA");
    std::string kubeconfig = WriteKubeconfig("bad-ca.kubeconfig", "controller", cluster_tls);
    CommandResult r = RunModelcache({"run", "--kubernetes", "--kubeconfig", kubeconfig, "--store",
                                     tmp_ / "store", "--listen", "127.0.0.1:0"});
    EXPECT_EQ(r.exit_code, 1) << r.err;
    EXPECT_NE(r.err.find("certificate"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find(api_.url()), std::string::npos) << r.err;
  }
  // The handshake failed: no request reached the server, so the token was never sent.
  EXPECT_EQ(api_.requests_by("controller", "modelcaches"), 0u);
  EXPECT_EQ(api_.stats().lists, 0u);
}

}  // namespace
}  // namespace modelcache::itest
