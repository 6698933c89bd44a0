// Kubernetes mode end to end: the real daemon (`modelcache run --kubernetes`) against the API
// server imitation (in this process, on 127.0.0.1) and the Hub imitation.

#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <thread>
#include <tuple>
#include <vector>

#include <gtest/gtest.h>
#include <httplib.h>
#include <nlohmann/json.hpp>

#include "tests/fixtures/hub/fake_hub.h"
#include "tests/fixtures/kube/fake_apiserver.h"
#include "tests/integration/harness.h"
#include "tests/integration/kube_objects.h"

namespace modelcache::itest {
namespace {

namespace fs = std::filesystem;
using modelcache::testing::ApiAnswer;
using modelcache::testing::FakeApiServer;
using modelcache::testing::FakeApiServerOptions;
using modelcache::testing::FakeHub;
using modelcache::testing::FakeRepoSpec;
using modelcache::testing::Fault;
using nlohmann::json;
using std::chrono::milliseconds;
using std::chrono::seconds;

constexpr char kFinalizer[] = "modelcache.dev/artifact";

std::string Phase(const json& object) {
  if (object.contains("status") && object["status"].contains("phase")) {
    return object["status"]["phase"].get<std::string>();
  }
  return "";
}

bool HasFinalizer(const json& object) {
  for (const json& f : object["metadata"].value("finalizers", json::array())) {
    if (f == kFinalizer) {
      return true;
    }
  }
  return false;
}

// What `kubectl wait --for=condition=Ready` checks: Ready=True, observed for the current
// generation.
bool IsReadyForGeneration(const json& object) {
  json ready = ReadyCondition(object);
  int64_t generation = object["metadata"].value("generation", int64_t{0});
  return Phase(object) == "Ready" && ready.is_object() && ready.value("status", "") == "True" &&
         ready.value("observedGeneration", int64_t{-1}) == generation &&
         object["status"].value("observedGeneration", int64_t{-1}) == generation;
}

class KubeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(hub_.Start());
    api_.AddToken(kControllerToken);
    ASSERT_TRUE(api_.Start());
    std::ofstream(kubeconfig()) << "apiVersion: v1\n"
                                   "kind: Config\n"
                                   "clusters:\n"
                                   "- name: fake\n"
                                   "  cluster: {server: \""
                                << api_.url()
                                << "\"}\n"
                                   "users:\n"
                                   "- name: controller\n"
                                   "  user: {token: "
                                << kControllerToken
                                << "}\n"
                                   "contexts:\n"
                                   "- name: fake\n"
                                   "  context: {cluster: fake, user: controller}\n"
                                   "current-context: fake\n";
  }

  std::string kubeconfig() const { return tmp_ / "kubeconfig"; }
  std::string store_dir() const { return tmp_ / "store"; }

  void AddRepo(const std::string& id, const std::map<std::string, std::string>& files,
               FakeRepoSpec spec = {}) {
    std::string dir = tmp_ / ("repos/" + id + "/main");
    WriteTree(dir, files);
    spec.id = id;
    spec.refs["main"] = dir;
    hub_.AddRepo(spec);
  }

  Daemon::Options DaemonOptions(std::vector<std::string> extra = {}) const {
    Daemon::Options o;
    o.store = store_dir();
    o.hf_endpoint = hub_.url();
    o.extra_args = {"--kubernetes", "--kubeconfig", kubeconfig(), "--retry-base-delay", "20ms",
                    "--resync-period", "30s"};
    o.extra_args.insert(o.extra_args.end(), extra.begin(), extra.end());
    return o;
  }

  json Get(const std::string& name) {
    ApiAnswer a = api_.GetModelCache("default", name);
    return a.status == 200 ? a.body : json();
  }

  // Polls default/<name> until `pred` holds; returns the last object read (null if none).
  json WaitObject(const std::string& name, const std::function<bool(const json&)>& pred,
                  milliseconds timeout = seconds(30)) {
    json last;
    WaitFor(
        [&] {
          last = Get(name);
          return !last.is_null() && pred(last);
        },
        timeout);
    return last;
  }

  json WaitReady(const std::string& name) { return WaitObject(name, IsReadyForGeneration); }

  json Create(const json& object) {
    ApiAnswer a = api_.CreateModelCache(object);
    EXPECT_EQ(a.status, 201) << a.body.dump();
    return a.body;
  }

  // Replaces the spec of <ns>/<name>, re-reading on conflict (the daemon writes too).
  json UpdateSpec(const std::string& name, const json& spec, const std::string& ns = "default") {
    for (int i = 0; i < 20; ++i) {
      json current = api_.GetModelCache(ns, name).body;
      current["spec"] = spec;
      ApiAnswer a = api_.Call(
          "PUT", "/apis/modelcache.dev/v1alpha1/namespaces/" + ns + "/modelcaches/" + name,
          current);
      if (a.status == 200) {
        return a.body;
      }
      EXPECT_EQ(a.status, 409) << a.body.dump();
    }
    ADD_FAILURE() << "update of " << name << " kept conflicting";
    return nullptr;
  }

  json Events() {
    ApiAnswer a = api_.ListEvents("default");
    EXPECT_EQ(a.status, 200);
    return a.body["items"];
  }

  // The events about `name` with `reason`.
  std::vector<json> EventsFor(const std::string& name, const std::string& reason) {
    std::vector<json> out;
    for (const json& e : Events()) {
      if (e["involvedObject"].value("name", "") == name && e.value("reason", "") == reason) {
        out.push_back(e);
      }
    }
    return out;
  }

  TempDir tmp_;
  FakeHub hub_;
  FakeApiServer api_{ApiOptions()};
};

TEST_F(KubeTest, CreatedObjectBecomesReadyWithStatusFinalizerAndEvents) {
  AddRepo("org/model", SmallModelFiles(40000, 1));
  Daemon daemon(DaemonOptions());
  daemon.Start();
  json created = Create(ModelCacheObject("model", "org/model"));

  json ready = WaitReady("model");
  ASSERT_TRUE(IsReadyForGeneration(ready)) << ready.dump(2) << daemon.Log();
  EXPECT_EQ(ready["metadata"]["generation"], 1);
  EXPECT_TRUE(HasFinalizer(ready));
  json condition = ReadyCondition(ready);
  EXPECT_EQ(condition["reason"], "ArtifactReady");
  EXPECT_FALSE(condition.value("lastTransitionTime", "").empty());
  const json& artifact = ready["status"]["artifact"];
  EXPECT_EQ(ready["status"]["resolvedRevision"].get<std::string>().size(), 40u);
  ASSERT_TRUE(artifact.contains("path"));
  EXPECT_TRUE(fs::exists(artifact["path"].get<std::string>() + "/config.json"));
  // The status subresource was used: the spec is as created (with the server's defaults).
  EXPECT_EQ(ready["spec"], created["spec"]);
  // Nobody else wrote: the daemon's own finalizer and status writes never conflicted with each
  // other, even where the watch had not caught up yet.
  EXPECT_EQ(api_.stats().conflicts, 0u);
  // The finalizer went on with one merge patch of the cached copy: no GET, no PUT.
  auto requests = api_.stats().http_requests;
  EXPECT_EQ(requests["patch modelcaches"], 1u);
  EXPECT_EQ(requests["get modelcaches"], 0u);
  EXPECT_EQ(requests["update modelcaches"], 0u);

  // Events: a Normal event on each phase transition, Ready last.
  ASSERT_TRUE(WaitFor([&] { return !EventsFor("model", "Ready").empty(); }, seconds(10)));
  json event = EventsFor("model", "Ready")[0];
  EXPECT_EQ(event["type"], "Normal");
  EXPECT_EQ(event["involvedObject"]["kind"], "ModelCache");
  EXPECT_EQ(event["involvedObject"]["uid"], ready["metadata"]["uid"]);
  EXPECT_EQ(event["source"]["component"], "modelcache");
  EXPECT_EQ(event["count"], 1);
  EXPECT_NE(event["message"].get<std::string>().find(artifact["id"].get<std::string>()),
            std::string::npos);
  EXPECT_EQ(daemon.Terminate(), 0) << daemon.Log();
}

TEST_F(KubeTest, SpecChangePublishesANewVersionForTheNewGeneration) {
  AddRepo("org/model", SmallModelFiles(40000, 2));
  Daemon daemon(DaemonOptions());
  daemon.Start();
  Create(ModelCacheObject("model", "org/model"));
  json first = WaitReady("model");
  ASSERT_TRUE(IsReadyForGeneration(first)) << daemon.Log();

  json spec = first["spec"];
  spec["source"]["exclude"] = {"original/*"};
  json updated = UpdateSpec("model", spec);
  ASSERT_EQ(updated["metadata"]["generation"], 2);
  json second = WaitObject("model", [](const json& o) {
    return IsReadyForGeneration(o) && o["metadata"]["generation"] == 2;
  });
  ASSERT_TRUE(IsReadyForGeneration(second)) << second.dump(2) << daemon.Log();
  EXPECT_NE(second["status"]["artifact"]["id"], first["status"]["artifact"]["id"]);
  EXPECT_FALSE(fs::exists(second["status"]["artifact"]["path"].get<std::string>() +
                          "/original/consolidated.pth"));
  EXPECT_EQ(daemon.Terminate(), 0);
}

TEST_F(KubeTest, DeletionCancelsWorkRemovesTheFinalizerAndKeepsBytesForGc) {
  AddRepo("org/done", SmallModelFiles(30000, 3));
  AddRepo("org/slow", SmallModelFiles(4 << 20, 4));
  Fault slow;
  slow.kind = Fault::Kind::Slow;
  slow.path_glob = "model.safetensors";
  slow.bytes_per_second = 256 << 10;
  slow.count = -1;
  Daemon daemon(DaemonOptions());
  daemon.Start();
  Create(ModelCacheObject("done", "org/done"));
  json done = WaitReady("done");
  ASSERT_TRUE(IsReadyForGeneration(done)) << daemon.Log();
  hub_.AddFault(slow);
  Create(ModelCacheObject("slow", "org/slow"));
  json downloading = WaitObject("slow", [](const json& o) { return Phase(o) == "Downloading"; });
  ASSERT_EQ(Phase(downloading), "Downloading") << daemon.Log();
  ASSERT_TRUE(HasFinalizer(downloading));

  // Both go; the finalizer holds each until the daemon has cancelled its work.
  for (const char* name : {"done", "slow"}) {
    ApiAnswer a = api_.DeleteModelCache("default", name);
    ASSERT_EQ(a.status, 200) << a.body.dump();
    EXPECT_TRUE(a.body["metadata"].contains("deletionTimestamp"));
  }
  ASSERT_TRUE(WaitFor([&] { return Get("done").is_null() && Get("slow").is_null(); }, seconds(10)))
      << Get("slow").dump(2) << daemon.Log();
  EXPECT_NE(daemon.Log().find("default/slow: cancelled its running job"), std::string::npos);
  // Retention: the artifact's bytes stay for store garbage collection.
  EXPECT_TRUE(fs::exists(done["status"]["artifact"]["path"].get<std::string>() + "/config.json"));
  EXPECT_EQ(daemon.Terminate(), 0) << daemon.Log();
}

TEST_F(KubeTest, DroppedWatchAndExpiredHistoryRelistWithoutMissingChanges) {
  AddRepo("org/a", SmallModelFiles(20000, 5));
  AddRepo("org/b", SmallModelFiles(20000, 6));
  Daemon daemon(DaemonOptions());
  daemon.Start();
  Create(ModelCacheObject("kept", "org/a"));
  Create(ModelCacheObject("changed", "org/a"));
  Create(ModelCacheObject("removed", "org/a"));
  for (const char* name : {"kept", "changed", "removed"}) {
    ASSERT_TRUE(IsReadyForGeneration(WaitReady(name))) << name << daemon.Log();
  }
  // The ModelCaches' watch, and the fleet aggregate's of Nodes and ModelCacheNodes.
  ASSERT_TRUE(WaitFor([&] { return api_.open_watches() == 3; }, seconds(5)));
  uint64_t gones = api_.stats().gones;

  // While the watch is down, three changes happen and the history is forgotten: the re-watch
  // gets 410 Expired, and only the relist can find them.
  api_.DropWatches();
  Create(ModelCacheObject("added", "org/b"));
  json spec = Get("changed")["spec"];
  spec["source"]["repo"] = "org/b";
  UpdateSpec("changed", spec);
  ASSERT_EQ(api_.DeleteModelCache("default", "removed").status, 200);
  api_.CompactHistory();

  EXPECT_TRUE(IsReadyForGeneration(WaitReady("added"))) << daemon.Log();
  json changed = WaitObject("changed", [](const json& o) {
    return IsReadyForGeneration(o) && o["metadata"]["generation"] == 2;
  });
  EXPECT_TRUE(IsReadyForGeneration(changed)) << changed.dump(2) << daemon.Log();
  EXPECT_NE(changed["status"]["artifact"]["id"].get<std::string>().find("b@sha256:"),
            std::string::npos);
  EXPECT_TRUE(WaitFor([&] { return Get("removed").is_null(); }, seconds(10))) << daemon.Log();
  EXPECT_GT(api_.stats().gones, gones);
  EXPECT_NE(daemon.Log().find("relisting"), std::string::npos);
  EXPECT_TRUE(IsReadyForGeneration(Get("kept")));
  EXPECT_EQ(daemon.Terminate(), 0);
}

TEST_F(KubeTest, StatusConflictsAreRetriedOnTheCurrentVersion) {
  AddRepo("org/model", SmallModelFiles(20000, 7));
  api_.FailNextStatusUpdatesWithConflict(3);
  Daemon daemon(DaemonOptions());
  daemon.Start();
  Create(ModelCacheObject("model", "org/model"));
  json ready = WaitReady("model");
  EXPECT_TRUE(IsReadyForGeneration(ready)) << daemon.Log();
  EXPECT_GE(api_.stats().conflicts, 3u);
  EXPECT_EQ(daemon.Terminate(), 0);
}

// A tenant's own server on 127.0.0.1: records the Authorization header of every request and
// answers 404 (no such repo).
class CaptureServer {
 public:
  CaptureServer() {
    server_.Get(".*", [this](const httplib::Request& req, httplib::Response& res) {
      {
        std::lock_guard lock(mu_);
        headers_.push_back(req.get_header_value("Authorization"));
      }
      res.status = 404;
    });
    server_.set_keep_alive_max_count(1);
    port_ = server_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    while (!server_.is_running()) {
      std::this_thread::sleep_for(milliseconds(1));
    }
  }
  ~CaptureServer() {
    server_.stop();
    thread_.join();
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  std::vector<std::string> Headers() const {
    std::lock_guard lock(mu_);
    return headers_;
  }

 private:
  httplib::Server server_;
  int port_ = 0;
  std::thread thread_;
  mutable std::mutex mu_;
  std::vector<std::string> headers_;
};

// tokenSecretRef played by a tenant who may create ModelCaches but not read Secrets: only a
// Secret labelled modelcache.dev/hub-token=true is used; another Secret of the namespace (a
// database password) never reaches the endpoint the resource names, and a missing Secret, a
// missing key and an unlabelled Secret give the same status message.
TEST_F(KubeTest, TokenSecretRefUsesOnlyLabelledSecretsAndTellsNothingElse) {
  const std::string secret_token = "hf_kube_private_secret_token";
  const std::string password = "db-password-of-the-namespace";
  FakeRepoSpec spec;
  spec.is_private = true;
  spec.tokens = {secret_token};
  AddRepo("org/private", SmallModelFiles(30000, 8), spec);
  ASSERT_EQ(api_.CreateSecret("default", "hf-token", {{"token", secret_token + "\n"}},
                              {{"modelcache.dev/hub-token", "true"}})
                .status,
            201);
  ASSERT_EQ(api_.CreateSecret("default", "db-creds", {{"password", password}}).status, 201);
  CaptureServer tenant;
  // The operator allows the tenant's endpoint (a mirror), so only the label stands between the
  // tenant and the namespace's other Secrets.
  Daemon daemon(DaemonOptions({"--allowed-endpoints", tenant.url()}));
  daemon.Start();
  auto with_ref = [&](const std::string& name, const std::string& key,
                      const std::string& endpoint) {
    json source = {{"repo", "org/private"}, {"tokenSecretRef", {{"name", name}, {"key", key}}}};
    if (!endpoint.empty()) {
      source["endpoint"] = endpoint;
    }
    return json{{"source", source}};
  };
  Create(ModelCacheObject("authed", "org/private", with_ref("hf-token", "token", "")));
  // Another endpoint is another spec: a name of its own, or it would fail on the name first.
  json steal = with_ref("db-creds", "password", tenant.url());
  steal["artifactName"] = "steal";
  Create(ModelCacheObject("steal", "org/private", steal));
  Create(ModelCacheObject("no-secret", "org/private", with_ref("nope", "t", "")));
  Create(ModelCacheObject("no-key", "org/private", with_ref("hf-token", "other", "")));
  // The tenant's server is reachable: a resource without a token reaches it.
  Create(ModelCacheObject("probe", "org/private",
                          {{"source", {{"repo", "org/private"}, {"endpoint", tenant.url()}}},
                           {"artifactName", "probe"}}));

  EXPECT_TRUE(IsReadyForGeneration(WaitReady("authed"))) << daemon.Log();
  auto failed = [](const json& o) {
    json c = ReadyCondition(o);
    return c.is_object() && c.value("reason", "") == "InvalidSpec";
  };
  auto message = [](const std::string& name, const std::string& key) {
    return "spec.source.tokenSecretRef: Secret \"" + name + "\" key \"" + key +
           "\" in namespace \"default\" is not usable as a Hub token (it must exist and carry "
           "the label modelcache.dev/hub-token=true)";
  };
  for (const auto& [object, name, key] :
       {std::tuple{"steal", "db-creds", "password"}, std::tuple{"no-secret", "nope", "t"},
        std::tuple{"no-key", "hf-token", "other"}}) {
    json o = WaitObject(object, failed);
    EXPECT_TRUE(failed(o)) << o.dump(2) << daemon.Log();
    EXPECT_EQ(ReadyCondition(o).value("message", ""), message(name, key)) << object;
  }
  ASSERT_TRUE(WaitFor([&] { return !tenant.Headers().empty(); }, seconds(30))) << daemon.Log();
  // Neither the password nor the token is anywhere: not at the tenant's server, in the log, any
  // object or any event.
  for (const std::string& header : tenant.Headers()) {
    EXPECT_EQ(header.find(password), std::string::npos);
    EXPECT_EQ(header.find(secret_token), std::string::npos);
  }
  for (const std::string& value : {secret_token, password}) {
    EXPECT_EQ(daemon.Log().find(value), std::string::npos);
    for (const char* name : {"authed", "steal", "no-secret", "no-key", "probe"}) {
      EXPECT_EQ(Get(name).dump().find(value), std::string::npos) << name;
    }
    EXPECT_EQ(Events().dump().find(value), std::string::npos);
  }
  // A failure is a Warning event.
  ASSERT_TRUE(WaitFor([&] { return !EventsFor("steal", "InvalidSpec").empty(); }, seconds(10)));
  EXPECT_EQ(EventsFor("steal", "InvalidSpec")[0]["type"], "Warning");
  EXPECT_EQ(daemon.Terminate(), 0);
}

// A tenant in another namespace names the victim's artifact: it fails with ArtifactNameConflict
// (a Warning Event in its namespace) and the victim's `current`, files and status stay as they
// were. Default names carry the namespace, so two namespaces caching one repo never meet; the
// owner's deletion frees the name.
TEST_F(KubeTest, AnotherNamespaceCannotTakeAnArtifactName) {
  AddRepo("org/victim", SmallModelFiles(20000, 11));
  AddRepo("org/tenant", SmallModelFiles(20000, 12));
  Daemon daemon(DaemonOptions());
  daemon.Start();
  auto in = [](const std::string& ns, json object) {
    object["metadata"]["namespace"] = ns;
    return object;
  };
  auto get = [&](const std::string& ns, const std::string& name) {
    ApiAnswer a = api_.GetModelCache(ns, name);
    return a.status == 200 ? a.body : json();
  };
  auto wait = [&](const std::string& ns, const std::string& name,
                  const std::function<bool(const json&)>& pred) {
    json last;
    WaitFor([&] {
      last = get(ns, name);
      return !last.is_null() && pred(last);
    });
    return last;
  };
  Create(ModelCacheObject("victim", "org/victim"));
  json victim = WaitReady("victim");
  ASSERT_TRUE(IsReadyForGeneration(victim)) << daemon.Log();
  const json artifact = victim["status"]["artifact"];
  EXPECT_EQ(artifact["name"], "default--victim");
  const std::string name_dir = store_dir() + "/artifacts/default--victim";
  const fs::path current = fs::read_symlink(name_dir + "/current");
  const std::string config = Slurp(name_dir + "/current/config.json");
  // The same repo in another namespace, by default: a name of its own.
  Create(in("team-b", ModelCacheObject("victim", "org/victim")));
  json neighbour = wait("team-b", "victim", IsReadyForGeneration);
  ASSERT_TRUE(IsReadyForGeneration(neighbour)) << daemon.Log();
  EXPECT_EQ(neighbour["status"]["artifact"]["name"], "team-b--victim");

  Create(in("tenant", ModelCacheObject("steal", "org/tenant",
                                       {{"artifactName", "default--victim"}})));
  auto conflict = [](const json& o) {
    return Phase(o) == "Failed" && ReadyCondition(o).value("reason", "") == "ArtifactNameConflict";
  };
  json steal = wait("tenant", "steal", conflict);
  ASSERT_TRUE(conflict(steal)) << steal.dump(2) << daemon.Log();
  EXPECT_EQ(ReadyCondition(steal)["message"].get<std::string>().find("default/victim"),
            std::string::npos)
      << "the status does not say who owns the name";
  ASSERT_TRUE(WaitFor([&] {
    json events = api_.ListEvents("tenant").body;
    for (const json& e : events["items"]) {
      if (e["involvedObject"].value("name", "") == "steal" &&
          e.value("reason", "") == "ArtifactNameConflict" && e.value("type", "") == "Warning") {
        return true;
      }
    }
    return false;
  }, seconds(10))) << daemon.Log();
  EXPECT_EQ(hub_.Requests("/api/models/org/tenant"), 0);
  EXPECT_EQ(fs::read_symlink(name_dir + "/current"), current);
  EXPECT_EQ(Slurp(name_dir + "/current/config.json"), config);
  json after = Get("victim");
  EXPECT_EQ(after["status"]["artifact"], artifact);
  EXPECT_EQ(Phase(after), "Ready");

  // The owner's deletion (through its finalizer) frees the name: the tenant's next reconcile
  // (here a spec change that caches the same thing) takes it.
  ASSERT_EQ(api_.DeleteModelCache("default", "victim").status, 200);
  ASSERT_TRUE(WaitFor([&] { return Get("victim").is_null(); }, seconds(10))) << daemon.Log();
  json spec = steal["spec"];
  spec["refreshInterval"] = "1h";
  ASSERT_FALSE(UpdateSpec("steal", spec, "tenant").is_null());
  json taken = wait("tenant", "steal", IsReadyForGeneration);
  ASSERT_TRUE(IsReadyForGeneration(taken)) << taken.dump(2) << daemon.Log();
  EXPECT_EQ(taken["status"]["artifact"]["name"], "default--victim");
  EXPECT_NE(fs::read_symlink(name_dir + "/current"), current);
  EXPECT_EQ(daemon.Terminate(), 0) << daemon.Log();
}

// A node daemon that starts while the API server does not answer (restarting, overloaded, or a
// kept-alive connection closed under it: the fleet benchmark saw 1 of 16 daemons exit so) tries
// its start-up requests again for a few seconds instead of exiting, and reports once the server
// is back.
TEST_F(KubeTest, NodeDaemonStartsThroughAnApiServerThatIsNotUpYet) {
  AddRepo("org/model", SmallModelFiles(20000, 11));
  ASSERT_EQ(api_.CreateNode("gpu-node-1", {{"gpu", "l40s"}}).status, 201);
  Create(ModelCacheObject("m", "org/model", {{"artifactName", "m"}}));
  const int port = api_.port();
  api_.Stop();
  Daemon daemon(DaemonOptions({"--node-name", "gpu-node-1"}));
  daemon.Start();
  std::this_thread::sleep_for(std::chrono::milliseconds(2500));
  ASSERT_TRUE(daemon.Running()) << daemon.Log();
  EXPECT_NE(daemon.Log().find("node gpu-node-1: read the Node"), std::string::npos)
      << daemon.Log();
  ASSERT_TRUE(api_.Start(port));
  ASSERT_TRUE(WaitFor([&] {
    ApiAnswer a = api_.GetModelCacheNode("gpu-node-1");
    return a.status == 200 && a.body.contains("status") &&
           a.body["status"].value("cachesReady", 0) == 1;
  })) << api_.GetModelCacheNode("gpu-node-1").body.dump(2) << daemon.Log();
  EXPECT_EQ(daemon.Terminate(), 0) << daemon.Log();
}

// The node daemon (--node-name): it caches what spec.nodeSelector gives its Node, reports in its
// own ModelCacheNode (owned by the Node) and never writes a ModelCache (no status, no
// finalizer); a relabelled Node takes effect without a restart; a deleted resource leaves the
// report; a restarted daemon takes its report over.
TEST_F(KubeTest, NodeDaemonReportsInItsModelCacheNodeAndFollowsItsNodesLabels) {
  AddRepo("org/model", SmallModelFiles(20000, 9));
  ApiAnswer node = api_.CreateNode("gpu-node-1", {{"gpu", "l40s"}, {"zone", "a"}});
  ASSERT_EQ(node.status, 201);
  Create(ModelCacheObject("mine", "org/model",
                          {{"nodeSelector", {{"gpu", "l40s"}}}, {"artifactName", "mine"}}));
  Create(ModelCacheObject("everyone", "org/model", {{"artifactName", "everyone"}}));
  Create(ModelCacheObject("other", "org/model",
                          {{"nodeSelector", {{"gpu", "h100"}}}, {"artifactName", "other"}}));

  // No such node: a clear error at start-up.
  CommandResult ghost = RunModelcache({"run", "--kubernetes", "--kubeconfig", kubeconfig(),
                                       "--store", store_dir(), "--node-name", "ghost"});
  EXPECT_EQ(ghost.exit_code, 1);
  EXPECT_NE(ghost.err.find("node \"ghost\" not found"), std::string::npos) << ghost.err;

  // The report's caches by name -> phase.
  auto report = [&] {
    std::map<std::string, std::string> phases;
    ApiAnswer a = api_.GetModelCacheNode("gpu-node-1");
    if (a.status == 200 && a.body.contains("status")) {
      for (const json& c : a.body["status"].value("caches", json::array())) {
        phases[c.value("name", "")] = c.value("phase", "");
      }
    }
    return phases;
  };
  using Phases = std::map<std::string, std::string>;
  // The Node's cache.modelcache.dev/ labels.
  auto cache_labels = [&] {
    std::map<std::string, std::string> out;
    json labels = api_.GetNode("gpu-node-1").body["metadata"].value("labels", json::object());
    for (const auto& [key, value] : labels.items()) {
      if (key.rfind("cache.modelcache.dev/", 0) == 0) {
        out[key] = value;
      }
    }
    return out;
  };

  // NODE_NAME (as a DaemonSet's downward API sets it) is the default for --node-name.
  Daemon::Options options = DaemonOptions();
  options.env["NODE_NAME"] = "gpu-node-1";
  auto daemon = std::make_unique<Daemon>(options);
  daemon->Start();
  ASSERT_TRUE(WaitFor([&] { return report() == Phases{{"everyone", "Ready"}, {"mine", "Ready"}}; }))
      << api_.GetModelCacheNode("gpu-node-1").body.dump(2) << daemon->Log();
  json mcn = api_.GetModelCacheNode("gpu-node-1").body;
  ASSERT_EQ(mcn["metadata"]["ownerReferences"].size(), 1u);
  EXPECT_EQ(mcn["metadata"]["ownerReferences"][0]["kind"], "Node");
  EXPECT_EQ(mcn["metadata"]["ownerReferences"][0]["uid"], node.body["metadata"]["uid"]);
  EXPECT_EQ(mcn["status"]["cachesReady"], 2);
  EXPECT_EQ(mcn["status"]["cachesTotal"], 2);
  EXPECT_GT(mcn["status"]["store"].value("usedBytes", uint64_t{0}), 20000u);
  EXPECT_GT(mcn["status"]["store"].value("freeBytes", uint64_t{0}), 0u);
  EXPECT_FALSE(mcn["status"].value("heartbeatTime", "").empty());
  for (const json& c : mcn["status"]["caches"]) {
    EXPECT_EQ(c["reason"], "ArtifactReady") << c;
    EXPECT_EQ(c["path"], store_dir() + "/artifacts/" + c["name"].get<std::string>() + "/current")
        << c;
    EXPECT_EQ(c["resolvedRevision"].get<std::string>().size(), 40u) << c;
    EXPECT_EQ(c["bytesDone"], c["bytesTotal"]) << c;
  }
  // Schedulable: one label per Ready copy.
  ASSERT_TRUE(WaitFor([&] {
    return cache_labels() == Phases{{"cache.modelcache.dev/default.everyone", "Ready"},
                                    {"cache.modelcache.dev/default.mine", "Ready"}};
  })) << api_.GetNode("gpu-node-1").body.dump(2);
  // The node writes no ModelCache: no status, no finalizer.
  for (const char* name : {"mine", "everyone", "other"}) {
    json o = Get(name);
    EXPECT_FALSE(o.contains("status")) << o.dump(2);
    EXPECT_FALSE(HasFinalizer(o)) << name;
  }
  for (const json& e : Events()) {
    EXPECT_NE(e["involvedObject"].value("name", ""), "other");
    EXPECT_EQ(e["source"].value("host", ""), "gpu-node-1");
  }
  EXPECT_FALSE(fs::exists(store_dir() + "/artifacts/other"));

  // Relabelled: "other" starts matching and "mine" stops, without a restart.
  ASSERT_EQ(api_.LabelNode("gpu-node-1", {{"gpu", "h100"}}).status, 200);
  ASSERT_TRUE(WaitFor([&] { return report() == Phases{{"everyone", "Ready"}, {"other", "Ready"}}; }))
      << api_.GetModelCacheNode("gpu-node-1").body.dump(2) << daemon->Log();
  EXPECT_TRUE(fs::exists(store_dir() + "/artifacts/other/current"));
  ASSERT_TRUE(WaitFor([&] {
    return cache_labels() == Phases{{"cache.modelcache.dev/default.everyone", "Ready"},
                                    {"cache.modelcache.dev/default.other", "Ready"}};
  })) << api_.GetNode("gpu-node-1").body.dump(2);

  // Deleted while the daemon runs: the entry goes.
  ASSERT_EQ(api_.DeleteModelCache("default", "other").status, 200);
  ASSERT_TRUE(WaitFor([&] { return report() == Phases{{"everyone", "Ready"}}; }))
      << daemon->Log();
  EXPECT_EQ(Get("other"), json()) << "no finalizer held it";

  // Deleted while the daemon is down: the restarted daemon drops it (level-based).
  EXPECT_EQ(daemon->Terminate(), 0);
  ASSERT_EQ(api_.DeleteModelCache("default", "everyone").status, 200);
  Create(ModelCacheObject("later", "org/model", {{"artifactName", "later"}}));
  daemon = std::make_unique<Daemon>(options);
  daemon->Start();
  ASSERT_TRUE(WaitFor([&] { return report() == Phases{{"later", "Ready"}}; }))
      << api_.GetModelCacheNode("gpu-node-1").body.dump(2) << daemon->Log();
  ASSERT_TRUE(WaitFor([&] {
    return cache_labels() == Phases{{"cache.modelcache.dev/default.later", "Ready"}};
  })) << api_.GetNode("gpu-node-1").body.dump(2);
  // The user's own labels were never touched.
  EXPECT_EQ(api_.GetNode("gpu-node-1").body["metadata"]["labels"]["gpu"], "h100");

  // The report goes with its Node (the garbage collector's work).
  EXPECT_EQ(daemon->Terminate(), 0);
  ASSERT_EQ(api_.DeleteNode("gpu-node-1").status, 200);
  EXPECT_EQ(api_.GetModelCacheNode("gpu-node-1").status, 404);
}

// A DaemonSet-only install (no controller): the node daemons elect one of themselves with a Lease
// to write the ModelCache's status, which follows the nodes (DESIGN.md "Fleets").
TEST_F(KubeTest, DaemonSetOnlyNodesElectOneWriterOfTheStatus) {
  AddRepo("org/model", SmallModelFiles(20000, 12));
  for (const char* n : {"node-a", "node-b"}) {
    ASSERT_EQ(api_.CreateNode(n, {{"gpu", "l40s"}}).status, 201);
  }
  Create(ModelCacheObject("m", "org/model", {{"nodeSelector", {{"gpu", "l40s"}}}}));
  std::vector<std::unique_ptr<Daemon>> daemons;
  for (const char* n : {"node-a", "node-b"}) {
    Daemon::Options o = DaemonOptions({"--node-name", n, "--fleet-writer-elect",
                                       "--node-heartbeat-interval", "1s"});
    o.store = tmp_ / (std::string("store-") + n);
    daemons.push_back(std::make_unique<Daemon>(o));
    daemons.back()->Start();
  }
  json m = WaitObject("m", [](const json& o) {
    return IsReadyForGeneration(o) && o["status"].contains("nodes") &&
           o["status"]["nodes"] == json({{"desired", 2}, {"ready", 2}, {"failed", 0}});
  });
  ASSERT_TRUE(IsReadyForGeneration(m)) << m.dump(2) << daemons[0]->Log() << daemons[1]->Log();
  json nodes_ready;
  for (const json& c : m["status"]["conditions"]) {
    if (c["type"] == "NodesReady") {
      nodes_ready = c;
    }
  }
  EXPECT_EQ(nodes_ready.value("status", ""), "True") << m.dump(2);
  EXPECT_EQ(nodes_ready.value("message", ""), "2 of 2 nodes ready");
  EXPECT_EQ(m["status"]["resolvedRevision"].get<std::string>().size(), 40u);
  EXPECT_FALSE(HasFinalizer(m));
  // One holder of the Lease, and one writer.
  ApiAnswer lease =
      api_.Call("GET", "/apis/coordination.k8s.io/v1/namespaces/default/leases/"
                       "modelcache-fleet-writer");
  ASSERT_EQ(lease.status, 200);
  std::string holder = lease.body["spec"].value("holderIdentity", "");
  EXPECT_TRUE(holder.rfind("node-a_", 0) == 0 || holder.rfind("node-b_", 0) == 0) << holder;
  int elected = 0;
  for (auto& d : daemons) {
    elected += d->Log().find("fleet writer: elected") != std::string::npos ? 1 : 0;
  }
  EXPECT_EQ(elected, 1);
  for (auto& d : daemons) {
    EXPECT_EQ(d->Terminate(), 0);
  }
}

TEST_F(KubeTest, RestartTrustsTheStatusOnTheServerAndWritesNothingNew) {
  AddRepo("org/model", SmallModelFiles(20000, 10));
  Create(ModelCacheObject("old", "org/model"));
  {
    Daemon daemon(DaemonOptions());
    daemon.Start();
    ASSERT_TRUE(IsReadyForGeneration(WaitReady("old"))) << daemon.Log();
    EXPECT_EQ(daemon.Terminate(), 0);
  }
  std::string rv = Get("old")["metadata"]["resourceVersion"];
  uint64_t status_updates = api_.stats().status_updates;
  Daemon daemon(DaemonOptions());
  daemon.Start();
  // A new object going Ready shows the restarted daemon has been through the old one.
  Create(ModelCacheObject("new", "org/model", {{"artifactName", "new"}}));
  ASSERT_TRUE(IsReadyForGeneration(WaitReady("new"))) << daemon.Log();
  EXPECT_EQ(Get("old")["metadata"]["resourceVersion"], rv);
  EXPECT_GT(api_.stats().status_updates, status_updates);  // the new one's
  EXPECT_EQ(daemon.Terminate(), 0);
}

TEST_F(KubeTest, BadCredentialsFailAtStartWithUnauthorized) {
  std::ofstream(tmp_ / "bad-kubeconfig")
      << "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {server: \"" << api_.url()
      << "\"}\nusers:\n- name: u\n  user: {token: wrong}\ncontexts:\n- name: c\n"
         "  context: {cluster: c, user: u}\ncurrent-context: c\n";
  // --listen on a free port: the default one may be taken by another daemon on this machine.
  CommandResult r = RunModelcache({"run", "--kubernetes", "--kubeconfig", tmp_ / "bad-kubeconfig",
                                   "--store", store_dir(), "--listen", "127.0.0.1:0"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("401"), std::string::npos) << r.err;
}


// The client-side rate limit, set in the --config file: with a burst of 5 and a refill of one
// token per 1000 s, the daemon sends exactly 5 requests (the list, then four of the watch and the
// writes, in whichever order the informer and the workers take their tokens) and then waits. The
// count is deterministic: the next token is 1000 s away.
TEST_F(KubeTest, KubeApiQpsAndBurstFromTheConfigFileCapTheRequestsSent) {
  AddRepo("org/model", SmallModelFiles(20000, 1));
  for (int i = 0; i < 4; ++i) {
    Create(ModelCacheObject("m" + std::to_string(i), "org/model",
                            {{"artifactName", "m" + std::to_string(i)}}));
  }
  std::ofstream(tmp_ / "config.yaml") << "kube-api-qps: 0.001\nkube-api-burst: 5\n";
  auto sent = [&] {
    uint64_t n = 0;
    for (const auto& [kind, count] : api_.stats().http_requests) {
      n += count;
    }
    return n;
  };
  Daemon daemon(DaemonOptions({"--config", tmp_ / "config.yaml"}));
  daemon.Start();
  ASSERT_TRUE(WaitFor([&] {
    return sent() >= 5 && daemon.Log().find("waits") != std::string::npos &&
           daemon.Log().find("for the client-side rate limit (--kube-api-qps 0.001, "
                             "--kube-api-burst 5)") != std::string::npos;
  })) << daemon.Log();
  EXPECT_EQ(sent(), 5u) << daemon.Log();
  EXPECT_EQ(api_.stats().http_requests["list modelcaches"], 1u);
  EXPECT_LE(api_.stats().http_requests["watch modelcaches"], 1u);
  // Four objects need twelve writes; at most four went out.
  int ready = 0;
  for (int i = 0; i < 4; ++i) {
    ready += IsReadyForGeneration(Get("m" + std::to_string(i))) ? 1 : 0;
  }
  EXPECT_LT(ready, 4);
  // Shutdown gives up the waiting requests instead of waiting for their tokens.
  EXPECT_EQ(daemon.Terminate(), 0) << daemon.Log();
  EXPECT_EQ(sent(), 5u);
}

TEST_F(KubeTest, KubeApiFlagsAreDocumentedAndCheckedOnTheCommandLine) {
  CommandResult help = RunModelcache({"run", "--help"});
  EXPECT_NE(help.out.find("--kube-api-qps"), std::string::npos) << help.out;
  EXPECT_NE(help.out.find("--kube-api-burst"), std::string::npos) << help.out;
  CommandResult bad = RunModelcache({"run", "--kubernetes", "--kubeconfig", kubeconfig(),
                                     "--store", store_dir(), "--kube-api-burst", "0"});
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.err.find("--kube-api-burst"), std::string::npos) << bad.err;
  CommandResult negative = RunModelcache({"run", "--kubernetes", "--kubeconfig", kubeconfig(),
                                          "--store", store_dir(), "--kube-api-qps", "-1"});
  EXPECT_NE(negative.exit_code, 0);
  EXPECT_NE(negative.err.find("--kube-api-qps"), std::string::npos) << negative.err;
}

}  // namespace
}  // namespace modelcache::itest
