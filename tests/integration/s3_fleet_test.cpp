// Fleets (DESIGN.md "Fleets"): one controller filling an S3 store (the ctest fixture's radosgw)
// and node daemons, each with its own local store, against the API server imitation and the Hub
// imitation. The controller fetches from the Hub once; every matching node copies the committed
// version from the bucket; the controller folds the nodes' reports into status.nodes and
// NodesReady.

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "common/files.h"
#include "tests/fixtures/hub/fake_hub.h"
#include "tests/fixtures/kube/fake_apiserver.h"
#include "tests/integration/harness.h"
#include "tests/integration/radosgw_env.h"

namespace modelcache::itest {
namespace {

namespace fs = std::filesystem;
using modelcache::testing::ApiAnswer;
using modelcache::testing::FakeApiServer;
using modelcache::testing::FakeRepoSpec;
using nlohmann::json;
using std::chrono::seconds;

constexpr char kFleetToken[] = "fleet-token";
constexpr size_t kWeights = 3'000'000;

json Condition(const json& object, const std::string& type) {
  if (object.contains("status") && object["status"].contains("conditions")) {
    for (const json& c : object["status"]["conditions"]) {
      if (c.value("type", "") == type) {
        return c;
      }
    }
  }
  return json::object();
}

// The files of a directory (relative path -> content).
std::map<std::string, std::string> Tree(const std::string& dir) {
  std::map<std::string, std::string> out;
  if (!fs::exists(dir)) {
    return out;
  }
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    if (e.is_regular_file()) {
      out[fs::relative(e.path(), dir).string()] = Slurp(e.path());
    }
  }
  return out;
}

class S3FleetTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto gw = LoadRadosGw();
    ASSERT_TRUE(gw) << "no radosgw: run through ctest (fixture radosgw_start)";
    gw_ = *gw;
    prefix_ = "fleet-" + UniqueSuffix();
    for (char& c : prefix_) {
      c = c == '.' ? '-' : c;
    }
    ASSERT_TRUE(hub_.Start());
    api_.AddToken(kFleetToken);
    ASSERT_TRUE(api_.Start());
    std::ofstream(tmp_ / "kubeconfig")
        << "apiVersion: v1\nkind: Config\n"
        << "clusters:\n- name: fake\n  cluster: {server: \"" << api_.url() << "\"}\n"
        << "users:\n- name: u\n  user: {token: " << kFleetToken << "}\n"
        << "contexts:\n- name: fake\n"
        << "  context: {cluster: fake, user: u, namespace: modelcache-system}\n"
        << "current-context: fake\n";
    ASSERT_EQ(api_.CreateSecret("modelcache-system", "modelcache-s3",
                                {{"AWS_ACCESS_KEY_ID", gw_.access_key},
                                 {"AWS_SECRET_ACCESS_KEY", gw_.secret_key},
                                 {"AWS_REGION", gw_.region},
                                 {"AWS_ENDPOINT_URL", gw_.endpoint}})
                  .status,
              201);
    fs::create_directories(tmp_ / "home");
  }

  std::string store_uri() const { return "s3://" + gw_.bucket + "/" + prefix_; }

  Daemon::Options Options(const std::string& store, std::vector<std::string> extra) const {
    Daemon::Options o;
    o.store = store;
    o.hf_endpoint = hub_.url();
    o.extra_args = {"--kubernetes",      "--kubeconfig",    tmp_ / "kubeconfig",
                    "--retry-base-delay", "20ms",           "--resync-period",
                    "30s",               "--s3-secret",     "modelcache-s3",
                    "--allowed-stores",  store_uri()};
    o.extra_args.insert(o.extra_args.end(), extra.begin(), extra.end());
    o.env = {{"HOME", tmp_ / "home"}};
    return o;
  }

  std::unique_ptr<Daemon> StartNode(const std::string& node) {
    auto d = std::make_unique<Daemon>(Options(
        tmp_ / node,
        {"--node-name", node, "--node-heartbeat-interval", "1s", "--fill-from-controller"}));
    d->Start();
    return d;
  }

  json Get(const std::string& name) {
    ApiAnswer a = api_.GetModelCache("default", name);
    return a.status == 200 ? a.body : json();
  }

  // Names of the caches in node's report.
  std::set<std::string> Reported(const std::string& node) {
    std::set<std::string> names;
    ApiAnswer a = api_.GetModelCacheNode(node);
    if (a.status == 200 && a.body.contains("status")) {
      for (const json& c : a.body["status"].value("caches", json::array())) {
        names.insert(c.value("name", ""));
      }
    }
    return names;
  }

  // Waits for status.nodes of default/<name> to be {desired, ready, failed}.
  bool WaitNodes(const std::string& name, int desired, int ready, int failed) {
    return WaitFor(
        [&] {
          json o = Get(name);
          return o.contains("status") && o["status"].contains("nodes") &&
                 o["status"]["nodes"] == json({{"desired", desired},
                                                {"ready", ready},
                                                {"failed", failed}});
        },
        seconds(60));
  }

  std::string Logs() {
    std::string out = Get("m").dump(2) + "\n";
    for (auto* d : {controller_.get(), nodes_[0].get(), nodes_[1].get(), nodes_[2].get(),
                    nodes_[3].get()}) {
      if (d != nullptr) {
        out += d->Log() + "\n----\n";
      }
    }
    return out;
  }

  RadosGw gw_;
  std::string prefix_;
  TempDir tmp_;
  testing::FakeHub hub_;
  FakeApiServer api_;
  std::unique_ptr<Daemon> controller_;
  std::unique_ptr<Daemon> nodes_[4];
};

TEST_F(S3FleetTest, OneFillFromTheHubVerifiedNodeCopiesAndTheAggregate) {
  std::string repo = tmp_ / "repos/org/fleet/main";
  auto files = SmallModelFiles(kWeights, 16);
  WriteTree(repo, files);
  FakeRepoSpec spec;
  spec.id = "org/fleet";
  spec.refs["main"] = repo;
  hub_.AddRepo(spec);
  for (const char* n : {"n0", "n1", "n2"}) {
    ASSERT_EQ(api_.CreateNode(n, {{"gpu", "l40s"}}).status, 201);
  }
  ASSERT_EQ(api_.CreateNode("n3", {{"gpu", "h100"}}).status, 201);

  // The liveness window is seconds here (3 minutes by default), the heartbeat 1 s.
  controller_ = std::make_unique<Daemon>(
      Options(store_uri(), {"--cache-dir", tmp_ / "controller", "--node-liveness-window", "4s"}));
  controller_->Start();
  for (int i = 0; i < 4; ++i) {
    nodes_[i] = StartNode("n" + std::to_string(i));
  }
  json object = {{"apiVersion", "modelcache.dev/v1alpha1"},
                 {"kind", "ModelCache"},
                 {"metadata", {{"name", "m"}, {"namespace", "default"}}},
                 {"spec",
                  {{"source", {{"repo", "org/fleet"}}},
                   {"artifactName", "m"},
                   {"nodeSelector", {{"gpu", "l40s"}}}}}};
  ASSERT_EQ(api_.CreateModelCache(object).status, 201);

  ASSERT_TRUE(WaitNodes("m", 3, 3, 0)) << Logs();
  json m = Get("m");
  EXPECT_EQ(m["status"]["phase"], "Ready");
  json nodes_ready = Condition(m, "NodesReady");
  EXPECT_EQ(nodes_ready.value("status", ""), "True") << m.dump(2);
  EXPECT_EQ(nodes_ready.value("message", ""), "3 of 3 nodes ready");
  const std::string id = m["status"]["artifact"]["id"];
  EXPECT_EQ(m["status"]["artifact"]["uri"].get<std::string>().rfind(store_uri(), 0), 0u);

  // Every matching node holds the same bytes; the Hub sent the weights once (the controller's
  // fill); the nodes copied the committed version from the bucket.
  auto reference = Tree(tmp_ / "n0/artifacts/m/current");
  ASSERT_FALSE(reference.empty());
  EXPECT_EQ(reference.at("model.safetensors"), files.at("model.safetensors"));
  for (const char* n : {"n1", "n2"}) {
    EXPECT_EQ(Tree(tmp_ / n + "/artifacts/m/current"), reference) << n;
  }
  EXPECT_EQ(hub_.BodyBytesServed("model.safetensors"), kWeights);
  for (const char* n : {"n0", "n1", "n2"}) {
    ApiAnswer report = api_.GetModelCacheNode(n);
    ASSERT_EQ(report.status, 200);
    const json& entry = report.body["status"]["caches"][0];
    EXPECT_EQ(entry["phase"], "Ready") << n;
    EXPECT_EQ(entry["artifactId"], id) << n;
  }
  // The node that does not match neither downloads nor reports it.
  EXPECT_FALSE(fs::exists(tmp_ / "n3/artifacts/m"));
  EXPECT_TRUE(Reported("n3").empty());
  ASSERT_EQ(api_.GetModelCacheNode("n3").status, 200) << "n3 reports, without m";

  // Relabelled, n3 joins.
  ASSERT_EQ(api_.LabelNode("n3", {{"gpu", "l40s"}}).status, 200);
  ASSERT_TRUE(WaitNodes("m", 4, 4, 0)) << Logs();
  EXPECT_EQ(Tree(tmp_ / "n3/artifacts/m/current"), reference);

  // n1 dies: its heartbeat stops and it leaves desired; restarted, it is back.
  nodes_[1]->Kill9();
  ASSERT_TRUE(WaitNodes("m", 3, 3, 0)) << Logs();
  nodes_[1] = StartNode("n1");
  ASSERT_TRUE(WaitNodes("m", 4, 4, 0)) << Logs();
  EXPECT_EQ(hub_.BodyBytesServed("model.safetensors"), kWeights) << "still the one fill";

  // Relabelled away, n3 leaves.
  ASSERT_EQ(api_.LabelNode("n3", {{"gpu", std::nullopt}}).status, 200);
  ASSERT_TRUE(WaitNodes("m", 3, 3, 0)) << Logs();
  ASSERT_TRUE(WaitFor([&] { return Reported("n3").empty(); }, seconds(30))) << Logs();

  // Deleted: the controller's finalizer goes as before (no node holds one), and every report
  // drops it.
  ASSERT_EQ(api_.DeleteModelCache("default", "m").status, 200);
  ASSERT_TRUE(WaitFor([&] { return api_.GetModelCache("default", "m").status == 404; }))
      << Logs();
  ASSERT_TRUE(WaitFor([&] {
    for (const char* n : {"n0", "n1", "n2", "n3"}) {
      if (!Reported(n).empty()) {
        return false;
      }
    }
    return true;
  }, seconds(30))) << Logs();
  EXPECT_EQ(controller_->Terminate(), 0);
  for (auto& n : nodes_) {
    EXPECT_EQ(n->Terminate(), 0);
  }
}

}  // namespace
}  // namespace modelcache::itest
