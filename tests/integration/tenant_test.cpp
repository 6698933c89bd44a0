// The daemon against a tenant: whoever may write a ModelCache names its own Hub endpoint and store.
// A second Hub imitation plays the tenant's server and records the Authorization headers it
// receives. What the operator has not allowed (--allowed-endpoints, --allowed-stores) fails with
// InvalidSpec before any request or write; an allowed endpoint never receives the daemon's token;
// the victim next to it becomes Ready. An artifact name belongs to the resource that claimed it
// first: another file naming it (or defaulting to it) fails with ArtifactNameConflict and leaves
// the owner's `current`, files and status alone, until the owner's deletion frees the name.
// An allowed endpoint that claims the victim's commit fills its own hub cache, never the one
// HF_HUB_CACHE=<store>/hub serves.

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "tests/integration/harness.h"

namespace modelcache::itest {
namespace {

constexpr const char* kHubToken = "hf_daemon_own_token";

class TenantTest : public DaemonTest {
 protected:
  void SetUp() override {
    DaemonTest::SetUp();
    ASSERT_TRUE(tenant_.Start());
    // Public repos on both servers, and both know the daemon's token: a token sent where it
    // must not go would be accepted there, so only the recorded headers can tell.
    testing::FakeRepoSpec spec;
    spec.tokens = {kHubToken};
    AddRepo("org/victim", SmallModelFiles(20000, 1), spec);
    std::string dir = repos_dir() + "/tenant/main";
    WriteTree(dir, SmallModelFiles(20000, 2));
    spec.id = "org/tenant";
    spec.refs["main"] = dir;
    tenant_.AddRepo(spec);
  }

  Daemon::Options TenantDaemonOptions(const std::vector<std::string>& extra = {}) const {
    Daemon::Options o = DaemonOptions(extra);
    o.env["HF_TOKEN"] = kHubToken;
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
  EXPECT_GT(hub_.RequestsWithAuthorization(std::string("Bearer ") + kHubToken), 0);
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
  EXPECT_EQ(tenant_.RequestsWithAuthorization(std::string("Bearer ") + kHubToken), 0);
  EXPECT_EQ(tenant_.RequestsWithAuthorization(""), tenant_.Requests("/"));
  EXPECT_GT(hub_.RequestsWithAuthorization(std::string("Bearer ") + kHubToken), 0);
  EXPECT_EQ(daemon.Terminate(), 0);
}

// The owner's `current` target and every file of the version it points to, by content.
std::map<std::string, std::string> ArtifactFiles(const std::string& dir) {
  namespace fs = std::filesystem;
  std::map<std::string, std::string> files;
  files["current ->"] = fs::read_symlink(dir + "/current").string();
  for (const auto& e : fs::recursive_directory_iterator(dir + "/current/")) {
    if (e.is_regular_file()) {
      files[fs::relative(e.path(), dir + "/current/").string()] = Slurp(e.path().string());
    }
  }
  return files;
}

// Two files of one watch directory: meta-llama/Llama-3.1-8B and unsloth/Llama-3.1-8B both default
// to the artifact name llama-3-1-8b, and a third names it on purpose for another repo. The first
// one keeps it; `modelcache validate` warned beforehand; deleting the owner frees the name.
TEST_F(TenantTest, AnArtifactNameBelongsToTheResourceThatClaimedItFirst) {
  AddRepo("meta-llama/Llama-3.1-8B", SmallModelFiles(20000, 3));
  AddRepo("unsloth/Llama-3.1-8B", SmallModelFiles(20000, 4));
  WriteManifest("victim.yaml", Manifest("victim", "meta-llama/Llama-3.1-8B"));
  Daemon daemon(TenantDaemonOptions());
  daemon.Start();
  auto victim = WaitReady("victim");
  ASSERT_TRUE(victim) << daemon.Log();
  ASSERT_TRUE(victim->status.artifact);
  EXPECT_EQ(victim->status.artifact->name, "llama-3-1-8b");
  const std::string name_dir = store_dir() + "/artifacts/llama-3-1-8b";
  const auto before = ArtifactFiles(name_dir);

  // The accidental clash (a default) and the deliberate one (an explicit artifactName, another
  // repo): validate warns about both, at their lines, and still calls the files valid.
  WriteManifest("copycat.yaml", Manifest("copycat", "unsloth/Llama-3.1-8B"));
  WriteManifest("tenant.yaml",
                Manifest("steal", "org/tenant", "  artifactName: llama-3-1-8b\n"));
  CommandResult validated = RunModelcache({"validate", watch_dir() + "/victim.yaml",
                                           watch_dir() + "/copycat.yaml",
                                           watch_dir() + "/tenant.yaml"});
  EXPECT_EQ(validated.exit_code, 0) << validated.err;
  EXPECT_NE(validated.out.find(watch_dir() + "/copycat.yaml:7: spec.artifactName: warning: "
                               "\"llama-3-1-8b\" (the default from spec.source.repo) is also the "
                               "artifact name of default/victim (" +
                               watch_dir() + "/victim.yaml:7)"),
            std::string::npos)
      << validated.out;
  EXPECT_NE(validated.out.find(watch_dir() + "/tenant.yaml:8: spec.artifactName: warning:"),
            std::string::npos)
      << validated.out;
  EXPECT_NE(validated.err.find("3 files valid, 2 warnings"), std::string::npos) << validated.err;
  CommandResult alone = RunModelcache({"validate", watch_dir() + "/copycat.yaml"});
  EXPECT_EQ(alone.out.find("warning"), std::string::npos) << alone.out;

  auto conflict = [](const crds::ModelCache& mc) {
    return mc.status.phase == crds::kPhaseFailed && ReadyReason(mc) == "ArtifactNameConflict";
  };
  for (const char* name : {"copycat", "steal"}) {
    auto refused = WaitForStatus(state_dir(), name, conflict);
    ASSERT_TRUE(refused && conflict(*refused)) << name << "\n" << daemon.Log();
    EXPECT_EQ(ReadyMessage(*refused).rfind("spec.artifactName: \"llama-3-1-8b\" in store ", 0),
              0U)
        << ReadyMessage(*refused);
    EXPECT_FALSE(refused->status.artifact);
  }
  // The log tells the operator who owns the name.
  EXPECT_NE(daemon.Log().find("is owned by dir " +
                              std::filesystem::canonical(watch_dir()).string() +
                              " default/victim; not caching"),
            std::string::npos)
      << daemon.Log();
  // Nothing of the victim moved: the same current, files and status; no other version appeared.
  EXPECT_EQ(ArtifactFiles(name_dir), before);
  size_t versions = 0;
  for (const auto& e : std::filesystem::directory_iterator(name_dir)) {
    versions += e.is_directory() && !e.is_symlink() ? 1 : 0;
  }
  EXPECT_EQ(versions, 1U);
  auto still = ReadStatus(state_dir(), "default", "victim");
  ASSERT_TRUE(still);
  EXPECT_EQ(still->status.phase, crds::kPhaseReady);
  EXPECT_EQ(still->status.artifact->id, victim->status.artifact->id);
  // The operator's own `prefetch` of the clashing repo does not take the name either.
  CommandResult prefetch =
      RunModelcache({"prefetch", "unsloth/Llama-3.1-8B", "--store", store_dir(), "--hf-endpoint",
                     hub_.url(), "--no-progress"});
  EXPECT_NE(prefetch.exit_code, 0);
  EXPECT_NE(prefetch.err.find("ArtifactNameConflict"), std::string::npos) << prefetch.err;
  EXPECT_EQ(ArtifactFiles(name_dir), before);
  EXPECT_EQ(hub_.Requests("/api/models/unsloth/Llama-3.1-8B"), 0);

  // Deleting the owner frees the name: the copycat takes it at its next reconcile (an edit that
  // does not change what it caches; otherwise the recheck after 30 s).
  std::filesystem::remove(watch_dir() + "/tenant.yaml");
  std::filesystem::remove(watch_dir() + "/victim.yaml");
  ASSERT_TRUE(WaitFor([&] { return !ReadStatus(state_dir(), "default", "victim"); }))
      << daemon.Log();
  WriteManifest("copycat.yaml",
                Manifest("copycat", "unsloth/Llama-3.1-8B", "  refreshInterval: 1h\n"));
  auto taken = WaitReady("copycat");
  ASSERT_TRUE(taken) << daemon.Log();
  EXPECT_EQ(taken->status.artifact->name, "llama-3-1-8b");
  EXPECT_NE(taken->status.artifact->id, victim->status.artifact->id);
  EXPECT_EQ(std::filesystem::canonical(name_dir + "/current"),
            std::filesystem::canonical(taken->status.artifact->path));
  EXPECT_EQ(daemon.Terminate(), 0);
}

std::string VerifiedText(const crds::ModelCache& mc) {
  const crds::Condition* c = crds::FindCondition(mc.status.conditions, "Verified");
  return c == nullptr ? "" : c->status + " " + c->reason + ": " + c->message;
}

TEST_F(TenantTest, AnEndpointClaimingThePinnedCommitNeverChangesWhatTheHubCacheServes) {
  // The victim pins the commit of org/victim's main on the daemon's Hub. The tenant's server
  // (allowed for it) serves other files for org/victim under that very commit id, on main too.
  const std::string commit = hub_.CommitOf("model", "org/victim", "main");
  const auto victim_files = SmallModelFiles(20000, 1);
  const auto tenant_files = SmallModelFiles(20000, 2);
  testing::FakeRepoSpec lie;
  lie.id = "org/victim";
  lie.refs["main"] = repos_dir() + "/tenant/main";
  lie.claimed_commits["main"] = commit;
  tenant_.AddRepo(lie);
  ASSERT_EQ(tenant_.CommitOf("model", "org/victim", "main"), commit);

  WriteManifest("victim.yaml", Manifest("victim", "org/victim", "    revision: " + commit + "\n"));
  Daemon daemon(
      TenantDaemonOptions({"--allowed-endpoints", tenant_.url(), "--verify-interval", "300ms"}));
  daemon.Start();
  auto victim = WaitReady("victim");
  ASSERT_TRUE(victim && IsReady(*victim)) << daemon.Log();
  WriteManifest("tenant.yaml",
                Manifest("tenant", "org/victim",
                         "    endpoint: " + tenant_.url() + "\n  artifactName: tenant-copy\n") +
                    "---\n" +
                    Manifest("tenant-pinned", "org/victim",
                             "    endpoint: " + tenant_.url() + "\n    revision: " + commit +
                                 "\n  artifactName: tenant-pinned\n"));
  auto tenant = WaitReady("tenant");
  ASSERT_TRUE(tenant && IsReady(*tenant)) << daemon.Log();
  auto pinned = WaitReady("tenant-pinned");
  ASSERT_TRUE(pinned && IsReady(*pinned)) << daemon.Log();
  EXPECT_EQ(tenant->status.resolved_revision, commit);

  // What HF_HUB_CACHE=<store>/hub HF_HUB_OFFLINE=1 resolves for the victim: its own files.
  const std::string victim_repo = store_dir() + "/hub/models--org--victim";
  for (const auto& [path, content] : victim_files) {
    EXPECT_TRUE(Slurp(victim_repo + "/snapshots/" + commit + "/" + path) == content) << path;
  }
  // The tenant's main moved the ref of its own cache only.
  EXPECT_FALSE(std::filesystem::exists(victim_repo + "/refs/main"));
  std::vector<std::string> hubs;
  for (const auto& e : std::filesystem::directory_iterator(store_dir() + "/hubs")) {
    hubs.push_back(e.path().string());
  }
  ASSERT_EQ(hubs.size(), 1U);
  EXPECT_EQ(Slurp(hubs[0] + "/models--org--victim/refs/main"), commit);
  EXPECT_EQ(Slurp(hubs[0] + "/models--org--victim/snapshots/" + commit + "/config.json"),
            tenant_files.at("config.json"));
  EXPECT_EQ(Slurp(tenant->status.artifact->path + "/config.json"), tenant_files.at("config.json"));

  // The victim keeps verifying clean against what its own endpoint served.
  auto verified = WaitForStatus(state_dir(), "victim", [](const crds::ModelCache& mc) {
    const crds::Condition* c = crds::FindCondition(mc.status.conditions, "Verified");
    return c != nullptr && c->status == "True" && c->reason == "Verified";
  });
  ASSERT_TRUE(verified) << daemon.Log();

  // A link re-pointed to another valid blob of the repo (the tenant's config.json, as an older
  // release's shared cache would have it) is drift: healed back to what the endpoint served.
  const std::string victim_etag = hub_.EtagOf("model", "org/victim", "main", "config.json");
  std::string foreign_etag;
  for (const auto& e :
       std::filesystem::directory_iterator(hubs[0] + "/models--org--victim/blobs")) {
    if (Slurp(e.path().string()) == tenant_files.at("config.json")) {
      foreign_etag = e.path().filename().string();
      std::filesystem::copy_file(e.path(), victim_repo + "/blobs/" + foreign_etag);
    }
  }
  ASSERT_FALSE(foreign_etag.empty());
  ASSERT_NE(foreign_etag, victim_etag);
  std::string link = victim_repo + "/snapshots/" + commit + "/config.json";
  std::filesystem::remove(link);
  std::filesystem::create_symlink("../../blobs/" + foreign_etag, link);
  auto healed = WaitForStatus(state_dir(), "victim", [](const crds::ModelCache& mc) {
    const crds::Condition* c = crds::FindCondition(mc.status.conditions, "Verified");
    return c != nullptr && c->reason == "Healed";
  });
  ASSERT_TRUE(healed) << daemon.Log();
  EXPECT_NE(VerifiedText(*healed).find("config.json: snapshot links blob " + foreign_etag),
            std::string::npos)
      << VerifiedText(*healed);
  EXPECT_EQ(Slurp(link), victim_files.at("config.json"));
  EXPECT_EQ(daemon.Terminate(), 0);
}

}  // namespace
}  // namespace modelcache::itest
