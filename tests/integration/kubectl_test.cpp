// The real kubectl (the one on PATH, or $MODELCACHE_KUBECTL) against the API-server imitation
// over HTTPS, with its CA as certificate-authority-data and a bearer token: every manifest in
// manifests/ passes `kubectl apply --dry-run=client`, and the README's flow (apply,
// wait --for=condition=Ready, get -o yaml, delete) works with the real daemon.
//
// Skipped, saying so, when there is no kubectl: scripts/install-deps.sh installs Debian's
// kubernetes-client when none is on PATH, so CI always runs these.

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "tests/fixtures/hub/fake_hub.h"
#include "tests/fixtures/kube/fake_apiserver.h"
#include "tests/fixtures/kube/test_tls.h"
#include "tests/integration/harness.h"

namespace modelcache::itest {
namespace {

namespace fs = std::filesystem;
using modelcache::testing::ApiAnswer;
using modelcache::testing::FakeApiServer;
using modelcache::testing::FakeApiServerOptions;
using modelcache::testing::FakeHub;
using modelcache::testing::FakeRepoSpec;
using nlohmann::json;

constexpr char kUserToken[] = "kubectl-user";
// The daemon's own token, limited to what manifests/'s ClusterRole grants it.
constexpr char kDaemonToken[] = "daemon-token";

// The full path of `name` found on PATH, "" if none.
std::string FindOnPath(const std::string& name) {
  const char* path = std::getenv("PATH");  // NOLINT(concurrency-mt-unsafe): test set-up
  std::istringstream dirs(path != nullptr ? path : "/usr/bin:/bin");
  for (std::string dir; std::getline(dirs, dir, ':');) {
    std::string candidate = dir + "/" + name;
    if (!dir.empty() && ::access(candidate.c_str(), X_OK) == 0) {
      return candidate;
    }
  }
  return "";
}

std::string ReadText(const std::string& path);

// Runs `argv` (argv[0]: a full path) to completion with this process's environment minus any
// Kubernetes settings, plus `env`; stdout and stderr captured through files in `scratch`.
CommandResult RunCommand(const std::vector<std::string>& argv,
                         const std::map<std::string, std::string>& env,
                         const std::string& scratch) {
  std::vector<std::string> env_storage;
  for (char** e = environ; *e != nullptr; ++e) {
    std::string kv(*e);
    std::string key = kv.substr(0, kv.find('='));
    if (env.count(key) == 0 && key != "KUBECONFIG" && key.rfind("KUBERNETES_", 0) != 0) {
      env_storage.push_back(kv);
    }
  }
  for (const auto& [k, v] : env) {
    env_storage.push_back(k + "=" + v);
  }
  std::vector<char*> envp;
  for (auto& kv : env_storage) {
    envp.push_back(kv.data());
  }
  envp.push_back(nullptr);
  std::vector<std::string> args = argv;
  std::vector<char*> cargs;
  for (auto& a : args) {
    cargs.push_back(a.data());
  }
  cargs.push_back(nullptr);
  std::string out_path = scratch + "/cmd.out";
  std::string err_path = scratch + "/cmd.err";
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 1, out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                   0644);
  posix_spawn_file_actions_addopen(&actions, 2, err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                   0644);
  pid_t pid = -1;
  CommandResult r;
  if (posix_spawn(&pid, cargs[0], &actions, nullptr, cargs.data(), envp.data()) == 0) {
    int status = 0;
    waitpid(pid, &status, 0);
    r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
  posix_spawn_file_actions_destroy(&actions);
  r.out = ReadText(out_path);
  r.err = ReadText(err_path);
  return r;
}

std::string Kubectl() {
  const char* env = std::getenv("MODELCACHE_KUBECTL");  // NOLINT(concurrency-mt-unsafe)
  if (env != nullptr && *env != '\0') {
    return env;
  }
  return FindOnPath("kubectl");
}

std::string ReadText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

int CountOccurrences(const std::string& text, const std::string& what) {
  int n = 0;
  for (size_t i = text.find(what); i != std::string::npos; i = text.find(what, i + 1)) {
    ++n;
  }
  return n;
}

// Top-level "kind:" lines of a YAML stream: its Kubernetes objects.
int CountKinds(const std::string& yaml) {
  int n = 0;
  std::istringstream in(yaml);
  for (std::string line; std::getline(in, line);) {
    n += line.rfind("kind: ", 0) == 0 ? 1 : 0;
  }
  return n;
}

// YAML documents that are Kubernetes objects in the files under `dir` (kustomization.yaml files
// are kustomize's, not objects).
int CountObjects(const std::string& dir) {
  int n = 0;
  for (const auto& entry : fs::recursive_directory_iterator(dir)) {
    std::string ext = entry.path().extension();
    if (entry.is_regular_file() && (ext == ".yaml" || ext == ".yml") &&
        entry.path().filename() != "kustomization.yaml") {
      n += CountKinds(ReadText(entry.path()));
    }
  }
  return n;
}

TEST(ManifestsTest, TheCrdInManifestsIsByteIdenticalToCrdsModelcacheYaml) {
  std::string crd = ReadText(std::string(MC_SOURCE_DIR) + "/crds/modelcache.yaml");
  ASSERT_FALSE(crd.empty());
  EXPECT_EQ(ReadText(std::string(MC_SOURCE_DIR) + "/manifests/kubernetes/base/crd.yaml"), crd)
      << "manifests/kubernetes/base/crd.yaml differs from crds/modelcache.yaml: copy it again "
         "(cp crds/modelcache.yaml manifests/kubernetes/base/crd.yaml)";
  std::string node_crd = ReadText(std::string(MC_SOURCE_DIR) + "/crds/modelcachenode.yaml");
  ASSERT_FALSE(node_crd.empty());
  EXPECT_EQ(ReadText(std::string(MC_SOURCE_DIR) +
                     "/manifests/kubernetes/base/crd-modelcachenode.yaml"),
            node_crd)
      << "manifests/kubernetes/base/crd-modelcachenode.yaml differs from "
         "crds/modelcachenode.yaml: copy it again";
}

class KubectlTest : public ::testing::Test {
 protected:
  void SetUp() override {
    kubectl_ = Kubectl();
    if (kubectl_.empty()) {
      GTEST_SKIP() << "kubectl not found on PATH (scripts/install-deps.sh installs Debian's "
                      "kubernetes-client); set MODELCACHE_KUBECTL to use another";
    }
    FakeApiServerOptions o;
    o.bookmark_interval = std::chrono::milliseconds(200);
    // HTTPS with the imitation's CA in the kubeconfig: client-go (so kubectl) sends bearer
    // tokens only over TLS, and with a token registered every request is authenticated.
    o.tls = true;
    api_ = std::make_unique<FakeApiServer>(o);
    api_->AddToken(kUserToken);
    ASSERT_TRUE(api_->Start());
    WriteKubeconfig(tmp_ / "kubeconfig", kUserToken);
    RecordProperty("kubectl", kubectl_ + ": " + Run({"version", "--client"}).out);
  }

  // A kubeconfig for the imitation: its URL, `ca_pem` (default: the imitation's CA) as
  // certificate-authority-data, `token`.
  void WriteKubeconfig(const std::string& path, const std::string& token,
                       std::string ca_pem = "") const {
    if (ca_pem.empty()) {
      ca_pem = api_->ca_pem();
    }
    std::ofstream(path) << "apiVersion: v1\nkind: Config\nclusters:\n"
                        << "- name: imitation\n  cluster:\n    server: \"" << api_->url() << "\"\n"
                        << "    certificate-authority-data: " << testing::Base64(ca_pem)
                        << "\nusers:\n- name: u\n  user: {token: " << token << "}\n"
                        << "contexts:\n- name: imitation\n"
                        << "  context: {cluster: imitation, user: u, namespace: default}\n"
                        << "current-context: imitation\n";
  }

  CommandResult Run(std::vector<std::string> args) {
    return RunWith(tmp_ / "kubeconfig", std::move(args));
  }

  // kubectl `args` with the kubeconfig `kubeconfig`.
  CommandResult RunWith(const std::string& kubeconfig, std::vector<std::string> args) {
    std::vector<std::string> argv{kubectl_, "--cache-dir", tmp_ / "kube-cache"};
    argv.insert(argv.end(), args.begin(), args.end());
    return RunCommand(argv, {{"KUBECONFIG", kubeconfig}, {"HOME", tmp_.path()}}, tmp_.path());
  }

  // The client's minor version ("" if kubectl does not say). The overlays use kustomize v4+
  // fields (resources naming directories, patches with targets, components): kubectl 1.21 and
  // later. Debian 12's own kubernetes-client is 1.20.
  std::string KubectlMinor() {
    CommandResult version = Run({"version", "--client", "-o", "json"});
    EXPECT_EQ(version.exit_code, 0) << version.err;
    auto client = nlohmann::json::parse(version.out, nullptr, false);
    return client.is_object() ? client["clientVersion"].value("minor", "") : "";
  }

  std::string kubectl_;
  TempDir tmp_;
  std::unique_ptr<FakeApiServer> api_;
};

TEST_F(KubectlTest, DryRunClientAcceptsEveryExample) {
  for (const char* dir : {"manifests/kubernetes/examples", "manifests/examples"}) {
    std::string path = std::string(MC_SOURCE_DIR) + "/" + dir;
    CommandResult r = Run({"apply", "--dry-run=client", "-f", path, "--recursive"});
    EXPECT_EQ(r.exit_code, 0) << dir << "\n" << r.out << r.err;
    EXPECT_EQ(r.err, "") << dir;
    int objects = CountObjects(path);
    EXPECT_GT(objects, 0);
    EXPECT_EQ(CountOccurrences(r.out, "(dry run)"), objects) << r.out;
  }
  // A dry run creates nothing.
  EXPECT_EQ(api_->stats().creates, 0u);
}

// The README's install: `kubectl apply -k` of each overlay. Each renders with `kubectl kustomize`
// into every object of the building blocks it names (so no manifest is left out of an overlay),
// with the image tag of this version and one namespace, and passes `kubectl apply
// --dry-run=client -k`.
TEST_F(KubectlTest, EveryKustomizeOverlayRendersAndPassesADryRun) {
  if (std::string minor = KubectlMinor(); std::atoi(minor.c_str()) < 21) {
    GTEST_SKIP() << "kubectl " << minor << " embeds kustomize older than v4; the overlays need "
                 << "kubectl 1.21 or later";
  }
  const std::string k8s = std::string(MC_SOURCE_DIR) + "/manifests/kubernetes/";
  int base = CountObjects(k8s + "base");
  int controller = CountObjects(k8s + "controller");
  int node = CountObjects(k8s + "node");
  // The fleet overlay drops the controller's PVC (its store is a bucket).
  const std::map<std::string, int> overlays = {
      {"controller", base + controller}, {"node", base + node}, {"fleet", base + controller + node - 1}};
  int found = 0;
  for (const auto& entry : fs::directory_iterator(k8s + "overlays")) {
    ++found;
    std::string name = entry.path().filename();
    ASSERT_EQ(overlays.count(name), 1u) << "an overlay this test does not know: " << name;
    CommandResult rendered = Run({"kustomize", entry.path()});
    ASSERT_EQ(rendered.exit_code, 0) << name << "\n" << rendered.err;
    EXPECT_EQ(CountKinds(rendered.out), overlays.at(name)) << name << "\n" << rendered.out;
    EXPECT_EQ(CountOccurrences(rendered.out, "image: "),
              CountOccurrences(rendered.out, "image: modelcache:" MC_PROJECT_VERSION "\n"))
        << name;
    EXPECT_GT(CountOccurrences(rendered.out, "image: "), 0) << name;
    EXPECT_EQ(CountOccurrences(rendered.out, "namespace: "),
              CountOccurrences(rendered.out, "namespace: modelcache-system\n"))
        << name;

    CommandResult r = Run({"apply", "--dry-run=client", "-k", entry.path()});
    EXPECT_EQ(r.exit_code, 0) << name << "\n" << r.out << r.err;
    EXPECT_EQ(r.err, "") << name;
    EXPECT_EQ(CountOccurrences(r.out, "(dry run)"), overlays.at(name)) << name << "\n" << r.out;
  }
  EXPECT_EQ(found, static_cast<int>(overlays.size()));
  EXPECT_EQ(api_->stats().creates, 0u);
}

// The optional NetworkPolicy of docs/kubernetes.md ("Network exposure"), as an operator adds it:
// a component of their own overlay. It adds its one object, in the overlay's namespace, selecting
// the daemons' pods, and admits only port 8081.
TEST_F(KubectlTest, TheNetworkPolicyComponentAddsOnePolicyToAnOverlay) {
  if (std::string minor = KubectlMinor(); std::atoi(minor.c_str()) < 21) {
    GTEST_SKIP() << "kubectl " << minor << " embeds kustomize older than v4";
  }
  const fs::path k8s = fs::path(MC_SOURCE_DIR) / "manifests/kubernetes";
  const fs::path mine = tmp_ / "my-cluster";
  fs::create_directories(mine);
  // kustomize takes only relative paths to other kustomizations.
  std::ofstream(mine / "kustomization.yaml")
      << "resources: [" << fs::relative(k8s / "overlays/node", mine).string() << "]\n"
      << "components: [" << fs::relative(k8s / "components/network-policy", mine).string()
      << "]\n";
  CommandResult plain = Run({"kustomize", k8s / "overlays/node"});
  CommandResult rendered = Run({"kustomize", mine});
  ASSERT_EQ(rendered.exit_code, 0) << rendered.err;
  EXPECT_EQ(CountKinds(rendered.out), CountKinds(plain.out) + 1) << rendered.out;
  EXPECT_EQ(CountOccurrences(rendered.out, "kind: NetworkPolicy\n"), 1) << rendered.out;
  EXPECT_EQ(CountOccurrences(rendered.out, "namespace: "),
            CountOccurrences(rendered.out, "namespace: modelcache-system\n"));
  EXPECT_EQ(CountOccurrences(rendered.out, "port: 8081\n"), 1) << rendered.out;
}

TEST_F(KubectlTest, UnknownFieldsAreRefused) {
  std::string bad = tmp_ / "bad.yaml";
  std::ofstream(bad) << "apiVersion: modelcache.dev/v1alpha1\nkind: ModelCache\nmetadata:\n"
                        "  name: bad\nspec:\n  source:\n    repo: org/model\n    bogus: 1\n";
  CommandResult r = Run({"apply", "-f", bad});
  EXPECT_NE(r.exit_code, 0);
  // kubectl up to 1.26 validates against /openapi/v2; later ones let the server refuse it
  // (fieldValidation=Strict).
  EXPECT_NE(r.err.find("bogus"), std::string::npos) << r.err;
  EXPECT_EQ(api_->GetModelCache("default", "bad").status, 404);
}

TEST_F(KubectlTest, ApplyWaitGetDeleteAgainstTheDaemon) {
  FakeHub hub;
  ASSERT_TRUE(hub.Start());
  std::string repo_dir = tmp_ / "repos/org/model/main";
  WriteTree(repo_dir, SmallModelFiles(30000, 3));
  FakeRepoSpec spec;
  spec.id = "org/model";
  spec.refs["main"] = repo_dir;
  hub.AddRepo(spec);

  // Install as the README says: the CRD first (stored by the imitation), then the daemon.
  CommandResult crd = Run({"apply", "-f", std::string(MC_SOURCE_DIR) + "/crds/modelcache.yaml"});
  ASSERT_EQ(crd.exit_code, 0) << crd.err;
  EXPECT_NE(crd.out.find("customresourcedefinition.apiextensions.k8s.io/modelcaches.modelcache.dev"),
            std::string::npos)
      << crd.out;

  // What manifests/kubernetes/base/rbac.yaml grants (the fleet aggregate reads Nodes and
  // ModelCacheNodes).
  api_->AddToken(kDaemonToken,
                 {"modelcaches", "secrets", "events", "leases", "nodes", "modelcachenodes"});
  WriteKubeconfig(tmp_ / "daemon-kubeconfig", kDaemonToken);
  Daemon::Options o;
  o.store = tmp_ / "store";
  o.hf_endpoint = hub.url();
  o.extra_args = {"--kubernetes", "--kubeconfig", tmp_ / "daemon-kubeconfig", "--retry-base-delay",
                  "20ms"};
  Daemon daemon(o);
  daemon.Start();

  std::string manifest = tmp_ / "model.yaml";
  std::ofstream(manifest) << "apiVersion: modelcache.dev/v1alpha1\nkind: ModelCache\nmetadata:\n"
                             "  name: model\nspec:\n  source:\n    repo: org/model\n";
  CommandResult apply = Run({"apply", "-f", manifest});
  ASSERT_EQ(apply.exit_code, 0) << apply.err;
  EXPECT_EQ(apply.out, "modelcache.modelcache.dev/model created\n");

  CommandResult wait =
      Run({"wait", "--for=condition=Ready", "modelcache/model", "--timeout=90s"});
  ASSERT_EQ(wait.exit_code, 0) << wait.err << daemon.Log();
  EXPECT_EQ(wait.out, "modelcache.modelcache.dev/model condition met\n");

  CommandResult yaml = Run({"get", "modelcache", "model", "-o", "yaml"});
  ASSERT_EQ(yaml.exit_code, 0) << yaml.err;
  EXPECT_NE(yaml.out.find("phase: Ready"), std::string::npos) << yaml.out;
  EXPECT_NE(yaml.out.find("resolvedRevision: "), std::string::npos) << yaml.out;
  // Kubernetes mode's default artifact name carries the namespace.
  EXPECT_NE(yaml.out.find("id: default--model@sha256:"), std::string::npos) << yaml.out;
  EXPECT_NE(yaml.out.find("- modelcache.dev/artifact"), std::string::npos) << yaml.out;

  // The table from the CRD's printer columns, through the short name.
  CommandResult table = Run({"get", "mc"});
  ASSERT_EQ(table.exit_code, 0) << table.err;
  EXPECT_EQ(table.out.rfind("NAME    PHASE   REVISION", 0), 0u) << table.out;
  EXPECT_NE(table.out.find("model   Ready   "), std::string::npos) << table.out;

  // A second apply of the same file changes nothing.
  CommandResult again = Run({"apply", "-f", manifest});
  EXPECT_EQ(again.out, "modelcache.modelcache.dev/model unchanged\n") << again.err;

  // delete waits until the object is gone: the daemon removes its finalizer.
  CommandResult del = Run({"delete", "-f", manifest, "--timeout=60s"});
  ASSERT_EQ(del.exit_code, 0) << del.err << daemon.Log();
  EXPECT_EQ(del.out, "modelcache.modelcache.dev \"model\" deleted\n");
  EXPECT_EQ(api_->GetModelCache("default", "model").status, 404);
  CommandResult gone = Run({"get", "modelcache", "model"});
  EXPECT_NE(gone.exit_code, 0);
  EXPECT_NE(gone.err.find("NotFound"), std::string::npos) << gone.err;
  EXPECT_EQ(daemon.Terminate(), 0);
  // Everything went over TLS with bearer tokens, kubectl's and the daemon's, and none was
  // refused.
  EXPECT_GT(api_->requests_by(kUserToken, "modelcaches"), 0u);
  EXPECT_GT(api_->requests_by(kDaemonToken, "modelcaches"), 0u);
  EXPECT_EQ(api_->stats().unauthorized, 0u);
  EXPECT_EQ(api_->stats().forbidden, 0u);
}

TEST_F(KubectlTest, AWrongTokenIsUnauthorizedTokensAreScopedAndOnlyItsCaIsTrusted) {
  ASSERT_EQ(api_->CreateModelCache(json::parse(R"({"apiVersion":"modelcache.dev/v1alpha1",
      "kind":"ModelCache","metadata":{"name":"model"},"spec":{"source":{"repo":"org/model"}}})"))
                .status,
            201);
  CommandResult ok = Run({"get", "modelcache", "model", "-o", "name"});
  ASSERT_EQ(ok.exit_code, 0) << ok.err;
  EXPECT_EQ(ok.out, "modelcache.modelcache.dev/model\n");

  WriteKubeconfig(tmp_ / "wrong-kubeconfig", "wrong-token");
  CommandResult wrong = RunWith(tmp_ / "wrong-kubeconfig", {"get", "modelcache", "model"});
  EXPECT_NE(wrong.exit_code, 0);
  EXPECT_NE(wrong.err.find("Unauthorized"), std::string::npos) << wrong.err;
  EXPECT_GT(api_->stats().unauthorized, 0u);

  // A known token without modelcaches: discovery works, the resource is Forbidden.
  api_->AddToken("events-only", {"events"});
  WriteKubeconfig(tmp_ / "scoped-kubeconfig", "events-only");
  CommandResult scoped = RunWith(tmp_ / "scoped-kubeconfig", {"get", "modelcache", "model"});
  EXPECT_NE(scoped.exit_code, 0);
  EXPECT_NE(scoped.err.find("Forbidden"), std::string::npos) << scoped.err;
  EXPECT_NE(scoped.err.find("modelcaches"), std::string::npos) << scoped.err;
  EXPECT_GT(api_->stats().forbidden, 0u);
  CommandResult events = RunWith(tmp_ / "scoped-kubeconfig", {"get", "events"});
  EXPECT_EQ(events.exit_code, 0) << events.err;

  // The server's certificate does not verify against another CA: no request reaches it.
  auto other = testing::MakeTestCertificates();
  ASSERT_TRUE(other) << other.error().ToString();
  WriteKubeconfig(tmp_ / "other-ca-kubeconfig", kUserToken, other->ca_pem);
  uint64_t lists = api_->stats().lists;
  CommandResult untrusted = RunWith(tmp_ / "other-ca-kubeconfig", {"get", "modelcache", "model"});
  EXPECT_NE(untrusted.exit_code, 0);
  EXPECT_NE(untrusted.err.find("x509"), std::string::npos) << untrusted.err;
  EXPECT_EQ(api_->stats().lists, lists);
}

// Fleets with the real kubectl: the ModelCacheNode CRD applies, `kubectl get modelcachenodes`
// prints its printer columns, and `kubectl wait --for=condition=NodesReady` returns once the
// aggregate writer sets the condition (written here through the status subresource, as the
// controller does; S3FleetTest runs the daemons).
TEST_F(KubectlTest, GetModelCacheNodesAndWaitForNodesReady) {
  CommandResult crd =
      Run({"apply", "-f", std::string(MC_SOURCE_DIR) + "/crds/modelcachenode.yaml"});
  ASSERT_EQ(crd.exit_code, 0) << crd.err;
  EXPECT_NE(crd.out.find("modelcachenodes.modelcache.dev"), std::string::npos) << crd.out;

  ApiAnswer node = api_->CreateNode("gpu-node-1", {{"gpu", "l40s"}});
  ASSERT_EQ(node.status, 201);
  const std::string path = "/apis/modelcache.dev/v1alpha1/modelcachenodes";
  json report = {{"apiVersion", "modelcache.dev/v1alpha1"},
                 {"kind", "ModelCacheNode"},
                 {"metadata",
                  {{"name", "gpu-node-1"},
                   {"ownerReferences",
                    {{{"apiVersion", "v1"},
                      {"kind", "Node"},
                      {"name", "gpu-node-1"},
                      {"uid", node.body["metadata"]["uid"]}}}}}}};
  ASSERT_EQ(api_->Call("POST", path, report).status, 201);
  ASSERT_EQ(api_->Call("PATCH", path + "/gpu-node-1/status",
                       {{"status",
                         {{"heartbeatTime", "2026-12-06T10:00:00Z"},
                          {"store", {{"usedBytes", 10}, {"freeBytes", 123456}}},
                          {"cachesReady", 1},
                          {"cachesTotal", 2}}}},
                       "application/merge-patch+json")
                .status,
            200);
  CommandResult table = Run({"get", "modelcachenodes"});
  ASSERT_EQ(table.exit_code, 0) << table.err;
  EXPECT_EQ(table.out.rfind("NAME         READY   CACHES   FREE     HEARTBEAT   AGE\n", 0), 0u)
      << table.out;
  EXPECT_NE(table.out.find("gpu-node-1   1       2        123456   "), std::string::npos)
      << table.out;
  CommandResult short_name = Run({"get", "mcn", "-o", "name"});
  EXPECT_EQ(short_name.out, "modelcachenode.modelcache.dev/gpu-node-1\n") << short_name.err;

  ASSERT_EQ(api_->CreateModelCache(json::parse(R"({"apiVersion":"modelcache.dev/v1alpha1",
      "kind":"ModelCache","metadata":{"name":"model"},"spec":{"source":{"repo":"org/model"}}})"))
                .status,
            201);
  std::atomic<bool> done{false};
  CommandResult wait;
  std::thread waiter([&] {
    wait = Run({"wait", "--for=condition=NodesReady", "modelcache/model", "--timeout=60s"});
    done = true;
  });
  // Not met before the condition is True.
  auto write = [&](const std::string& status) {
    json current = api_->GetModelCache("default", "model").body;
    current["status"] = {{"phase", "Ready"},
                         {"nodes", {{"desired", 1}, {"ready", status == "True" ? 1 : 0},
                                    {"failed", 0}}},
                         {"conditions",
                          {{{"type", "NodesReady"},
                            {"status", status},
                            {"reason", status == "True" ? "NodesReady" : "NodesNotReady"},
                            {"message", "..."},
                            {"lastTransitionTime", "2026-12-06T10:00:00Z"}}}}};
    return api_->Call("PUT", "/apis/modelcache.dev/v1alpha1/namespaces/default/modelcaches/model/status",
                      current)
        .status;
  };
  ASSERT_EQ(write("False"), 200);
  EXPECT_FALSE(done.load());
  ASSERT_EQ(write("True"), 200);
  waiter.join();
  EXPECT_EQ(wait.exit_code, 0) << wait.err;
  EXPECT_EQ(wait.out, "modelcache.modelcache.dev/model condition met\n");
  CommandResult mc = Run({"get", "mc", "model"});
  EXPECT_NE(mc.out.find("NODES-READY   NODES-DESIRED"), std::string::npos) << mc.out;
}

}  // namespace
}  // namespace modelcache::itest
