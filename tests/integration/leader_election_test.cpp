// Two replicas of the real daemon with --leader-elect against the API-server imitation: only the
// Lease holder reconciles; kill -9 of the leader hands over after the lease duration; SIGTERM
// hands over at once (the Lease is released).

#include <fstream>
#include <memory>
#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "tests/fixtures/hub/fake_hub.h"
#include "tests/fixtures/kube/fake_apiserver.h"
#include "tests/integration/harness.h"
#include "tests/integration/kube_objects.h"

namespace modelcache::itest {
namespace {

using modelcache::testing::ApiAnswer;
using modelcache::testing::FakeApiServer;
using modelcache::testing::FakeApiServerOptions;
using modelcache::testing::FakeHub;
using modelcache::testing::FakeRepoSpec;
using nlohmann::json;
using std::chrono::milliseconds;
using std::chrono::seconds;

constexpr char kLeasePath[] =
    "/apis/coordination.k8s.io/v1/namespaces/modelcache-system/leases/modelcache-controller";

bool IsReadyObject(const json& object) {
  if (!object.contains("status") || !object["status"].contains("conditions")) {
    return false;
  }
  for (const json& c : object["status"]["conditions"]) {
    if (c.value("type", "") == "Ready") {
      return c.value("status", "") == "True" &&
             c.value("observedGeneration", int64_t{-1}) ==
                 object["metadata"].value("generation", int64_t{0});
    }
  }
  return false;
}

class LeaderElectionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(hub_.Start());
    for (const char* token : {"replica-a", "replica-b"}) {
      api_.AddToken(token);
    }
    ASSERT_TRUE(api_.Start());
    std::string dir = tmp_ / "repos/org/model/main";
    WriteTree(dir, SmallModelFiles(30000, 7));
    FakeRepoSpec spec;
    spec.id = "org/model";
    spec.refs["main"] = dir;
    hub_.AddRepo(spec);
  }

  // A replica: its own kubeconfig (bearer token = identity, so the server can tell who did
  // what), a shared store, the given lease duration.
  std::unique_ptr<Daemon> Replica(const std::string& identity, const std::string& lease,
                                  const std::string& renew = "1500ms") {
    std::string kubeconfig = tmp_ / ("kubeconfig-" + identity);
    std::ofstream(kubeconfig) << "apiVersion: v1\nkind: Config\n"
                              << "clusters:\n- name: fake\n  cluster: {server: \"" << api_.url()
                              << "\"}\nusers:\n- name: u\n  user: {token: " << identity
                              << "}\ncontexts:\n- name: fake\n  context: {cluster: fake, user: "
                                 "u, namespace: modelcache-system}\ncurrent-context: fake\n";
    Daemon::Options o;
    o.store = tmp_ / "store";
    o.hf_endpoint = hub_.url();
    o.extra_args = {"--kubernetes",
                    "--kubeconfig",
                    kubeconfig,
                    "--retry-base-delay",
                    "20ms",
                    "--leader-elect",
                    "--leader-elect-identity",
                    identity,
                    "--leader-elect-lease-duration",
                    lease,
                    "--leader-elect-renew-deadline",
                    renew,
                    "--leader-elect-retry-period",
                    "200ms"};
    auto d = std::make_unique<Daemon>(o);
    d->Start();
    return d;
  }

  json Lease() {
    ApiAnswer a = api_.Call("GET", kLeasePath);
    return a.status == 200 ? a.body : json();
  }
  std::string Holder() {
    json lease = Lease();
    return lease.is_null() ? "" : lease["spec"].value("holderIdentity", "");
  }

  json WaitReady(const std::string& name, milliseconds timeout = seconds(60)) {
    json last;
    WaitFor(
        [&] {
          ApiAnswer a = api_.GetModelCache("default", name);
          last = a.body;
          return a.status == 200 && IsReadyObject(last);
        },
        timeout);
    return last;
  }

  void Create(const std::string& name) {
    ApiAnswer a = api_.CreateModelCache(ModelCacheObject(name, "org/model"));
    ASSERT_EQ(a.status, 201) << a.body.dump();
  }

  TempDir tmp_;
  FakeHub hub_;
  FakeApiServer api_{ApiOptions()};
};

TEST_F(LeaderElectionTest, OnlyTheLeaseHolderReconcilesAndTheFollowerWritesNothing) {
  // Timings with room for a loaded machine: a renewal stalled past the deadline would end the
  // leader's term, which this test does not want.
  auto a = Replica("replica-a", "6s", "4s");
  ASSERT_TRUE(WaitFor([&] { return Holder() == "replica-a"; })) << a->Log();
  auto b = Replica("replica-b", "6s", "4s");
  // b reads the Lease and finds it held.
  ASSERT_TRUE(WaitFor([&] { return api_.requests_by("replica-b", "leases") >= 3; })) << b->Log();
  Create("one");
  Create("two");
  EXPECT_TRUE(IsReadyObject(WaitReady("one"))) << a->Log();
  EXPECT_TRUE(IsReadyObject(WaitReady("two"))) << a->Log();
  EXPECT_GT(api_.requests_by("replica-a", "modelcaches"), 0u);
  // The follower never listed, watched or wrote a ModelCache, nor an Event.
  EXPECT_EQ(api_.requests_by("replica-b", "modelcaches"), 0u) << b->Log();
  EXPECT_EQ(api_.requests_by("replica-b", "events"), 0u);
  EXPECT_EQ(Holder(), "replica-a");
  EXPECT_TRUE(b->Running());
  EXPECT_EQ(b->Log().find("initial sync done"), std::string::npos) << b->Log();
  EXPECT_EQ(a->Terminate(), 0);
  EXPECT_EQ(b->Terminate(), 0);
}

TEST_F(LeaderElectionTest, KillingTheLeaderHandsOverAfterTheLeaseDuration) {
  auto a = Replica("replica-a", "3s", "2s");
  ASSERT_TRUE(WaitFor([&] { return Holder() == "replica-a"; })) << a->Log();
  auto b = Replica("replica-b", "3s", "2s");
  Create("before");
  EXPECT_TRUE(IsReadyObject(WaitReady("before"))) << a->Log();
  a->Kill9();
  // No release: b waits until the record has not changed for the lease duration, then takes it.
  ASSERT_TRUE(WaitFor([&] { return Holder() == "replica-b"; }, seconds(30))) << b->Log();
  json lease = Lease();
  EXPECT_EQ(lease["spec"]["leaseTransitions"], 1);
  EXPECT_EQ(lease["spec"]["leaseDurationSeconds"], 3);
  // The new leader reconciles what changes from now on, and what was there.
  Create("after");
  EXPECT_TRUE(IsReadyObject(WaitReady("after"))) << b->Log();
  EXPECT_GT(api_.requests_by("replica-b", "modelcaches"), 0u);
  EXPECT_NE(b->Log().find("initial sync done"), std::string::npos) << b->Log();
  EXPECT_EQ(b->Terminate(), 0);
}

TEST_F(LeaderElectionTest, SigtermReleasesTheLeaseSoTheFollowerTakesOverAtOnce) {
  // A lease far longer than the test waits: the follower can only take over before it expires
  // because the leader released it.
  auto a = Replica("replica-a", "120s", "10s");
  ASSERT_TRUE(WaitFor([&] { return Holder() == "replica-a"; })) << a->Log();
  auto b = Replica("replica-b", "120s", "10s");
  ASSERT_TRUE(WaitFor([&] { return api_.requests_by("replica-b", "leases") >= 2; }));
  Create("m");
  EXPECT_TRUE(IsReadyObject(WaitReady("m"))) << a->Log();
  EXPECT_EQ(a->Terminate(), 0) << a->Log();
  EXPECT_NE(a->Log().find("released lease"), std::string::npos) << a->Log();
  ASSERT_TRUE(WaitFor([&] { return Holder() == "replica-b"; }, seconds(60))) << b->Log();
  json lease = Lease();
  EXPECT_EQ(lease["spec"]["leaseTransitions"], 1);
  EXPECT_EQ(lease["spec"]["leaseDurationSeconds"], 120);
  // b now leads: a spec change is reconciled by it.
  ApiAnswer m = api_.GetModelCache("default", "m");
  m.body["spec"]["source"]["revision"] = "main";
  m.body["spec"]["refreshInterval"] = "2h";
  ASSERT_EQ(api_.Call("PUT", "/apis/modelcache.dev/v1alpha1/namespaces/default/modelcaches/m",
                      m.body)
                .status,
            200);
  json ready = WaitReady("m");
  EXPECT_TRUE(IsReadyObject(ready)) << b->Log();
  EXPECT_EQ(ready["metadata"]["generation"], 2);
  EXPECT_EQ(b->Terminate(), 0);
}

TEST_F(LeaderElectionTest, LeaderElectWithoutKubernetesIsRefused) {
  CommandResult r = RunModelcache({"run", "--watch-dir", tmp_ / "manifests", "--store",
                                   tmp_ / "store", "--leader-elect"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("--leader-elect"), std::string::npos) << r.err;
  auto probe = Replica("replica-a", "1s");  // writes kubeconfig-replica-a
  probe->Kill9();
  r = RunModelcache({"run", "--kubernetes", "--kubeconfig", tmp_ / "kubeconfig-replica-a",
                     "--store", tmp_ / "store", "--leader-elect", "--leader-elect-lease-duration",
                     "5s", "--leader-elect-renew-deadline", "5s"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("--leader-elect-lease-duration"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace modelcache::itest
