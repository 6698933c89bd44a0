// The daemon against a tenant: whoever may write a ModelCache names its own Hub endpoint and store.
// A second Hub imitation plays the tenant's server and records the Authorization headers it
// receives. What the operator has not allowed (--allowed-endpoints, --allowed-stores) fails with
// InvalidSpec before any request or write; an allowed endpoint never receives the daemon's token;
// the victim next to it becomes Ready.

#include <filesystem>
#include <string>

#include <gtest/gtest.h>

#include "tests/integration/harness.h"

namespace modelcache::itest {
namespace {

constexpr const char* kDaemonToken = "hf_daemon_own_token";

std::string ReadyMessage(const crds::ModelCache& mc) {
  const crds::Condition* c = crds::FindCondition(mc.status.conditions, "Ready");
  return c == nullptr ? "" : c->message;
}

class TenantTest : public DaemonTest {
 protected:
  void SetUp() override {
    DaemonTest::SetUp();
    ASSERT_TRUE(tenant_.Start());
    // Public repos on both servers, and both know the daemon's token: a token sent where it
    // must not go would be accepted there, so only the recorded headers can tell.
    testing::FakeRepoSpec spec;
    spec.tokens = {kDaemonToken};
    AddRepo("org/victim", SmallModelFiles(20000, 1), spec);
    std::string dir = repos_dir() + "/tenant/main";
    WriteTree(dir, SmallModelFiles(20000, 2));
    spec.id = "org/tenant";
    spec.refs["main"] = dir;
    tenant_.AddRepo(spec);
  }

  Daemon::Options TenantDaemonOptions(const std::vector<std::string>& extra = {}) const {
    Daemon::Options o = DaemonOptions(extra);
    o.env["HF_TOKEN"] = kDaemonToken;
    return o;
  }

  testing::FakeHub tenant_;
};

TEST_F(TenantTest, EndpointAndStoreOutsideTheAllowListsFailBeforeAnyRequestOrWrite) {
  std::string elsewhere = tmp_ / "elsewhere";
  WriteManifest("tenant.yaml",
                Manifest("steal-token", "org/tenant", "    endpoint: " + tenant_.url() + "\n") +
                    "---\n" +
                    Manifest("write-elsewhere", "org/victim",
                             "  storage:\n    uri: file://" + elsewhere + "\n") +
                    "---\n" + Manifest("victim", "org/victim"));
  Daemon daemon(TenantDaemonOptions());
  daemon.Start();

  auto steal = WaitForStatus(state_dir(), "steal-token", [](const crds::ModelCache& mc) {
    return mc.status.phase == crds::kPhaseFailed;
  });
  ASSERT_TRUE(steal) << daemon.Log();
  EXPECT_EQ(ReadyReason(*steal), "InvalidSpec");
  EXPECT_EQ(ReadyMessage(*steal), "spec.source.endpoint: \"" + tenant_.url() +
                                      "\" is not among the endpoints this daemon allows "
                                      "(--allowed-endpoints)");
  auto write = WaitForStatus(state_dir(), "write-elsewhere", [](const crds::ModelCache& mc) {
    return mc.status.phase == crds::kPhaseFailed;
  });
  ASSERT_TRUE(write) << daemon.Log();
  EXPECT_EQ(ReadyReason(*write), "InvalidSpec");
  EXPECT_EQ(ReadyMessage(*write).rfind("spec.storage.uri: \"file://" + elsewhere + "\"", 0), 0U)
      << ReadyMessage(*write);
  auto victim = WaitReady("victim");
  ASSERT_TRUE(victim) << daemon.Log();

  EXPECT_EQ(tenant_.Requests("/"), 0);
  EXPECT_FALSE(std::filesystem::exists(elsewhere));
  EXPECT_GT(hub_.RequestsWithAuthorization(std::string("Bearer ") + kDaemonToken), 0);
  EXPECT_EQ(daemon.Terminate(), 0);
}

TEST_F(TenantTest, AnAllowedEndpointNeverReceivesTheDaemonsToken) {
  WriteManifest("tenant.yaml",
                Manifest("tenant", "org/tenant", "    endpoint: " + tenant_.url() + "/\n") +
                    "---\n" + Manifest("victim", "org/victim"));
  Daemon daemon(TenantDaemonOptions({"--allowed-endpoints", tenant_.url()}));
  daemon.Start();

  ASSERT_TRUE(WaitReady("tenant")) << daemon.Log();
  ASSERT_TRUE(WaitReady("victim")) << daemon.Log();
  // The tenant's server served revision, tree and files, every one without the daemon's token;
  // the daemon's own endpoint received it.
  EXPECT_GT(tenant_.Requests("/"), 0);
  EXPECT_EQ(tenant_.RequestsWithAuthorization(std::string("Bearer ") + kDaemonToken), 0);
  EXPECT_EQ(tenant_.RequestsWithAuthorization(""), tenant_.Requests("/"));
  EXPECT_GT(hub_.RequestsWithAuthorization(std::string("Bearer ") + kDaemonToken), 0);
  EXPECT_EQ(daemon.Terminate(), 0);
}

}  // namespace
}  // namespace modelcache::itest
