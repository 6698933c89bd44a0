// Directory mode end to end: the real daemon watching a folder of manifests, against the Hub
// imitation.

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <thread>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "common/files.h"
#include "common/sha256.h"
#include "tests/fixtures/hub/fake_hub.h"
#include "tests/integration/harness.h"

namespace modelcache::itest {
namespace {

namespace fs = std::filesystem;
using modelcache::testing::FakeHub;
using modelcache::testing::FakeRepoSpec;
using modelcache::testing::Fault;
using std::chrono::milliseconds;
using std::chrono::seconds;

class DirectoryModeTest : public DaemonTest {};

TEST_F(DirectoryModeTest, ModelBecomesReadyAsValidHubCacheAndArtifact) {
  auto files = SmallModelFiles(2 << 20, 1);
  AddRepo("org/tiny-model", files);
  WriteManifest("tiny.yaml", Manifest("tiny", "org/tiny-model"));
  Daemon daemon(DaemonOptions());
  daemon.Start();
  auto mc = WaitReady("tiny");
  ASSERT_TRUE(mc && IsReady(*mc)) << daemon.Log();

  std::string commit = hub_.CommitOf("model", "org/tiny-model", "main");
  EXPECT_EQ(mc->status.resolved_revision, commit);
  EXPECT_EQ(mc->status.observed_generation, 1);
  EXPECT_EQ(ReadyReason(*mc), "ArtifactReady");
  const crds::Condition* ready = crds::FindCondition(mc->status.conditions, "Ready");
  ASSERT_NE(ready, nullptr);
  EXPECT_EQ(ready->status, "True");
  ASSERT_TRUE(mc->status.artifact.has_value());
  const auto& art = *mc->status.artifact;
  // artifactName defaults to the repo's name, not the resource's.
  EXPECT_EQ(art.name, "tiny-model");
  EXPECT_EQ(art.id.rfind("tiny-model@sha256:", 0), 0u) << art.id;
  EXPECT_EQ(art.id.size(), std::string("tiny-model@sha256:").size() + 64);
  EXPECT_EQ(art.files, 5);
  uint64_t total = 0;
  for (const auto& [p, c] : files) {
    total += c.size();
  }
  EXPECT_EQ(art.size_bytes, total);

  // The hub cache: refs without newline, snapshot entries as relative links to blobs.
  std::string repo_dir = store_dir() + "/hub/models--org--tiny-model";
  EXPECT_EQ(Slurp(repo_dir + "/refs/main"), commit);
  for (const auto& [path, content] : files) {
    fs::path link = fs::path(repo_dir) / "snapshots" / commit / path;
    ASSERT_TRUE(fs::is_symlink(link)) << link;
    EXPECT_TRUE(fs::read_symlink(link).is_relative()) << fs::read_symlink(link);
    EXPECT_EQ(Slurp(link.string()), content) << path;
  }
  std::string weights_blob = repo_dir + "/blobs/" + Sha256Hex(files["model.safetensors"]);
  EXPECT_TRUE(fs::is_regular_file(weights_blob));
  EXPECT_TRUE(fs::is_regular_file(repo_dir + "/blobs/" +
                                  hub_.EtagOf("model", "org/tiny-model", "main", "config.json")));

  // The artifact: current -> version, every file, the manifest.
  ASSERT_FALSE(art.path.empty());
  EXPECT_EQ(fs::canonical(store_dir() + "/artifacts/tiny-model/current"), fs::canonical(art.path));
  for (const auto& [path, content] : files) {
    EXPECT_EQ(Slurp(art.path + "/" + path), content) << path;
  }
  auto manifest = nlohmann::json::parse(Slurp(art.path + "/modelcache.json"));
  EXPECT_EQ(manifest["id"], art.id);
  EXPECT_EQ(manifest["files"].size(), 5u);
  // Nothing half-written is left.
  for (const auto& e : fs::recursive_directory_iterator(store_dir())) {
    EXPECT_EQ(e.path().string().find(".incomplete"), std::string::npos) << e.path();
    EXPECT_EQ(e.path().string().find(".staging"), std::string::npos) << e.path();
  }

  // modelcache get, table and json.
  auto table = RunModelcache({"get", "--state-dir", state_dir()});
  EXPECT_EQ(table.exit_code, 0) << table.err;
  EXPECT_NE(table.out.find("NAME"), std::string::npos) << table.out;
  EXPECT_NE(table.out.find("tiny"), std::string::npos);
  EXPECT_NE(table.out.find("Ready"), std::string::npos);
  EXPECT_NE(table.out.find(commit.substr(0, 12)), std::string::npos);
  auto json = RunModelcache({"get", "-o", "json", "--state-dir", state_dir()});
  ASSERT_EQ(json.exit_code, 0) << json.err;
  auto list = nlohmann::json::parse(json.out);
  EXPECT_EQ(list["kind"], "List");
  ASSERT_EQ(list["items"].size(), 1u);
  EXPECT_EQ(list["items"][0]["status"]["phase"], "Ready");
  EXPECT_EQ(list["items"][0]["status"]["artifact"]["id"], art.id);

  EXPECT_EQ(daemon.Terminate(), 0) << daemon.Log();
}

TEST_F(DirectoryModeTest, DatasetRepo) {
  FakeRepoSpec spec;
  spec.type = "dataset";
  std::map<std::string, std::string> files{{"data/train.parquet", RandomBytes(300000, 7)},
                                           {"README.md", "# data\n"}};
  std::string dir = repos_dir() + "/datasets/org/data/main";
  WriteTree(dir, files);
  spec.id = "org/data";
  spec.refs["main"] = dir;
  hub_.AddRepo(spec);
  WriteManifest("data.yaml", Manifest("data", "org/data", "    type: dataset\n"));
  Daemon daemon(DaemonOptions());
  daemon.Start();
  auto mc = WaitReady("data");
  ASSERT_TRUE(mc && IsReady(*mc)) << daemon.Log();
  std::string repo_dir = store_dir() + "/hub/datasets--org--data";
  EXPECT_EQ(Slurp(repo_dir + "/snapshots/" + mc->status.resolved_revision + "/data/train.parquet"),
            files["data/train.parquet"]);
  EXPECT_EQ(mc->status.artifact->files, 2);
}

TEST_F(DirectoryModeTest, IncludeAndExcludeSelectFiles) {
  AddRepo("org/filtered", SmallModelFiles(100000, 3));
  WriteManifest("f.yaml", Manifest("filtered", "org/filtered",
                                   "    include: [\"*.json\", \"*.safetensors\", \"original/*\"]\n"
                                   "    exclude: [\"original/*\"]\n"));
  Daemon daemon(DaemonOptions());
  daemon.Start();
  auto mc = WaitReady("filtered");
  ASSERT_TRUE(mc && IsReady(*mc)) << daemon.Log();
  const std::string& art = mc->status.artifact->path;
  EXPECT_TRUE(fs::exists(art + "/config.json"));
  EXPECT_TRUE(fs::exists(art + "/tokenizer.json"));
  EXPECT_TRUE(fs::exists(art + "/model.safetensors"));
  EXPECT_FALSE(fs::exists(art + "/README.md"));
  EXPECT_FALSE(fs::exists(art + "/original/consolidated.pth"));
  EXPECT_EQ(mc->status.artifact->files, 3);
  EXPECT_EQ(hub_.BodyBytesServed("original/consolidated.pth"), 0u);
}

TEST_F(DirectoryModeTest, PrivateRepoNeedsTheSecretToken) {
  FakeRepoSpec spec;
  spec.is_private = true;
  spec.tokens = {"hf_private_secret_token"};
  AddRepo("org/private", SmallModelFiles(50000, 4), spec);
  fs::create_directories(tmp_ / "secrets/hf-token");
  std::ofstream(tmp_ / "secrets/hf-token/token") << "hf_private_secret_token\n";
  WriteManifest("anon.yaml", Manifest("anon", "org/private"));
  WriteManifest("authed.yaml", Manifest("authed", "org/private",
                                        "    tokenSecretRef: {name: hf-token, key: token}\n"));
  auto options = DaemonOptions();
  options.secrets_dir = tmp_ / "secrets";
  Daemon daemon(options);
  daemon.Start();
  auto authed = WaitReady("authed");
  ASSERT_TRUE(authed && IsReady(*authed)) << daemon.Log();
  auto anon = WaitForStatus(state_dir(), "anon",
                            [](const auto& mc) { return mc.status.phase == crds::kPhaseFailed; });
  ASSERT_TRUE(anon) << daemon.Log();
  EXPECT_EQ(ReadyReason(*anon), "RepoNotFound");
  // The token appears nowhere the daemon writes.
  EXPECT_EQ(daemon.Log().find("hf_private_secret_token"), std::string::npos);
  for (const auto& e : fs::recursive_directory_iterator(state_dir())) {
    if (e.is_regular_file()) {
      EXPECT_EQ(Slurp(e.path().string()).find("hf_private_secret_token"), std::string::npos);
    }
  }
}

TEST_F(DirectoryModeTest, GatedRepoIsUnauthorizedWithAccessHint) {
  FakeRepoSpec spec;
  spec.gated = "manual";
  spec.tokens = {"hf_granted"};
  AddRepo("org/gated", SmallModelFiles(50000, 5), spec);
  WriteManifest("g.yaml", Manifest("gated", "org/gated"));
  Daemon daemon(DaemonOptions());
  daemon.Start();
  auto mc = WaitForStatus(state_dir(), "gated",
                          [](const auto& m) { return m.status.phase == crds::kPhaseFailed; });
  ASSERT_TRUE(mc) << daemon.Log();
  EXPECT_EQ(ReadyReason(*mc), "Unauthorized");
  const crds::Condition* c = crds::FindCondition(mc->status.conditions, "Ready");
  EXPECT_NE(c->message.find("org/gated"), std::string::npos) << c->message;
}

TEST_F(DirectoryModeTest, UnknownRepoAndRevisionFailPermanently) {
  AddRepo("org/exists", SmallModelFiles(1000, 6));
  WriteManifest("a.yaml", Manifest("norepo", "org/does-not-exist"));
  WriteManifest("b.yaml", Manifest("norev", "org/exists", "    revision: no-such-branch\n"));
  Daemon daemon(DaemonOptions());
  daemon.Start();
  auto failed = [](const auto& m) { return m.status.phase == crds::kPhaseFailed; };
  auto a = WaitForStatus(state_dir(), "norepo", failed);
  auto b = WaitForStatus(state_dir(), "norev", failed);
  ASSERT_TRUE(a && b) << daemon.Log();
  EXPECT_EQ(ReadyReason(*a), "RepoNotFound");
  EXPECT_EQ(ReadyReason(*b), "RevisionNotFound");
  const crds::Condition* c = crds::FindCondition(a->status.conditions, "Ready");
  EXPECT_NE(c->message.find("org/does-not-exist"), std::string::npos) << c->message;
}

struct FaultCase {
  const char* name;
  Fault fault;
  // Bound on the bytes served for the faulty file, in file sizes: a dropped connection resumes,
  // a corrupt download has to be fetched whole once more.
  double max_served = 1.5;
};

void PrintTo(const FaultCase& c, std::ostream* os) { *os << c.name; }

class FaultTest : public DirectoryModeTest, public ::testing::WithParamInterface<FaultCase> {};

TEST_P(FaultTest, RecoversToReady) {
  auto files = SmallModelFiles(3 << 20, 11);
  AddRepo("org/faulty", files);
  hub_.AddFault(GetParam().fault);
  WriteManifest("f.yaml", Manifest("faulty", "org/faulty"));
  Daemon daemon(DaemonOptions());
  daemon.Start();
  auto mc = WaitReady("faulty", seconds(60));
  ASSERT_TRUE(mc && IsReady(*mc)) << daemon.Log();
  EXPECT_EQ(Slurp(mc->status.artifact->path + "/model.safetensors"), files["model.safetensors"]);
  EXPECT_LE(static_cast<double>(hub_.BodyBytesServed("model.safetensors")),
            GetParam().max_served * static_cast<double>(files["model.safetensors"].size()));
}

Fault MakeFault(Fault::Kind kind, int status, uint64_t bytes, int count) {
  Fault f;
  f.kind = kind;
  f.path_glob = "model.safetensors";
  f.status = status;
  f.bytes = bytes;
  f.count = count;
  f.retry_after_seconds = 1;
  return f;
}

INSTANTIATE_TEST_SUITE_P(
    Faults, FaultTest,
    ::testing::Values(FaultCase{"RateLimited", MakeFault(Fault::Kind::Status, 429, 0, 2)},
                      FaultCase{"ServerError", MakeFault(Fault::Kind::Status, 500, 0, 3)},
                      FaultCase{"Unavailable", MakeFault(Fault::Kind::Status, 503, 0, 2)},
                      FaultCase{"DroppedMidFile",
                                MakeFault(Fault::Kind::DropAfter, 0, 1 << 20, 2)},
                      FaultCase{"CorruptOnce", MakeFault(Fault::Kind::Corrupt, 0, 12345, 1), 2.0},
                      FaultCase{"IgnoresRange", MakeFault(Fault::Kind::IgnoreRange, 0, 0, -1), 1.0}),
    [](const ::testing::TestParamInfo<FaultCase>& param_info) { return param_info.param.name; });

TEST_F(DirectoryModeTest, PersistentCorruptionIsChecksumMismatch) {
  AddRepo("org/corrupt", SmallModelFiles(200000, 12));
  Fault f;
  f.kind = Fault::Kind::Corrupt;
  f.path_glob = "model.safetensors";
  f.bytes = 100;
  f.count = -1;
  hub_.AddFault(f);
  WriteManifest("c.yaml", Manifest("corrupt", "org/corrupt"));
  Daemon daemon(DaemonOptions());
  daemon.Start();
  auto mc = WaitForStatus(state_dir(), "corrupt",
                          [](const auto& m) { return ReadyReason(m) == "ChecksumMismatch"; });
  ASSERT_TRUE(mc) << daemon.Log();
  EXPECT_NE(mc->status.phase, crds::kPhaseReady);
  // The corrupt bytes were never published as a blob.
  std::string blobs = store_dir() + "/hub/models--org--corrupt/blobs";
  std::string sha = hub_.EtagOf("model", "org/corrupt", "main", "model.safetensors");
  EXPECT_FALSE(fs::exists(blobs + "/" + sha));
}

TEST_F(DirectoryModeTest, SlowDownloadReportsProgress) {
  auto files = SmallModelFiles(4 << 20, 13);
  AddRepo("org/slow", files);
  hub_.AddFault(SlowWeights(1 << 20));
  WriteManifest("s.yaml", Manifest("slow", "org/slow"));
  Daemon daemon(DaemonOptions());
  daemon.Start();
  auto mid = WaitForStatus(state_dir(), "slow", [](const auto& m) {
    return m.status.phase == crds::kPhaseDownloading && m.status.progress &&
           m.status.progress->bytes_done > 0 &&
           m.status.progress->bytes_done < m.status.progress->bytes_total;
  });
  ASSERT_TRUE(mid && mid->status.phase == crds::kPhaseDownloading) << daemon.Log();
  EXPECT_GT(mid->status.progress->bytes_total, 4u << 20);
  EXPECT_EQ(mid->status.progress->files_total, 5);
  auto done = WaitReady("slow");
  ASSERT_TRUE(done && IsReady(*done)) << daemon.Log();
}

TEST_F(DirectoryModeTest, KillNineMidDownloadResumesAfterRestart) {
  auto files = SmallModelFiles(16 << 20, 14);
  AddRepo("org/big", files);
  hub_.AddFault(SlowWeights(4 << 20));
  WriteManifest("big.yaml", Manifest("big", "org/big"));
  // One range (one connection, a chunk size above the file size): its data on disk is a plain
  // prefix, resumed to the byte. A file split into ranges resumes from its last persisted chunk
  // map (TransferTest).
  auto options = DaemonOptions({"--chunk-size", "32MiB", "--max-connections-per-artifact", "1"});
  {
    Daemon daemon(options);
    daemon.Start();
    auto mid = WaitForStatus(state_dir(), "big", [](const auto& m) {
      return m.status.progress && m.status.progress->bytes_done > (6u << 20);
    });
    ASSERT_TRUE(mid) << daemon.Log();
    daemon.Kill9();
  }
  uint64_t before = hub_.BodyBytesServed("model.safetensors");
  ASSERT_GT(before, 4u << 20);
  ASSERT_LT(before, 16u << 20);
  hub_.ClearFaults();
  Daemon again(options);
  again.Start();
  auto mc = WaitReady("big");
  ASSERT_TRUE(mc && IsReady(*mc)) << again.Log();
  EXPECT_EQ(Slurp(mc->status.artifact->path + "/model.safetensors"), files["model.safetensors"]);
  // Only the missing tail was fetched again (plus at most what was in flight, unflushed).
  uint64_t total_served = hub_.BodyBytesServed("model.safetensors");
  EXPECT_LT(total_served, (16u << 20) + (2u << 20)) << "served " << total_served;
}

TEST_F(DirectoryModeTest, RevisionChangeMidDownloadSwitchesToTheNewCommit) {
  auto files = SmallModelFiles(8 << 20, 15);
  std::string main_dir = AddRepo("org/moving", files);
  std::string v2_dir = repos_dir() + "/org/moving/v2";
  auto files2 = SmallModelFiles(100000, 16);
  WriteTree(v2_dir, files2);
  hub_.SetRef("model", "org/moving", "v2", v2_dir);
  hub_.AddFault(SlowWeights(1 << 20));
  WriteManifest("m.yaml", Manifest("moving", "org/moving"));
  Daemon daemon(DaemonOptions());
  daemon.Start();
  ASSERT_TRUE(WaitForStatus(state_dir(), "moving", [](const auto& m) {
    return m.status.progress && m.status.progress->bytes_done > 0 &&
           m.status.phase == crds::kPhaseDownloading;
  })) << daemon.Log();
  hub_.ClearFaults();
  WriteManifest("m.yaml", Manifest("moving", "org/moving", "    revision: v2\n"));
  std::string v2 = hub_.CommitOf("model", "org/moving", "v2");
  auto mc = WaitForStatus(state_dir(), "moving", [&](const auto& m) {
    return IsReady(m) && m.status.resolved_revision == v2;
  });
  ASSERT_TRUE(mc && IsReady(*mc)) << daemon.Log();
  EXPECT_EQ(mc->status.observed_generation, 2);
  EXPECT_EQ(mc->metadata.generation, 2);
  EXPECT_EQ(Slurp(mc->status.artifact->path + "/model.safetensors"), files2["model.safetensors"]);
}

TEST_F(DirectoryModeTest, DeletedManifestCancelsWorkAndRemovesStatus) {
  AddRepo("org/deleted", SmallModelFiles(8 << 20, 17));
  hub_.AddFault(SlowWeights(1 << 20));
  WriteManifest("d.yaml", Manifest("deleted", "org/deleted"));
  Daemon daemon(DaemonOptions());
  daemon.Start();
  ASSERT_TRUE(WaitForStatus(state_dir(), "deleted", [](const auto& m) {
    return m.status.progress && m.status.progress->bytes_done > 0;
  })) << daemon.Log();
  fs::remove(watch_dir() + "/d.yaml");
  EXPECT_TRUE(WaitFor([&] { return !ReadStatus(state_dir(), "default", "deleted"); }))
      << daemon.Log();
  // The transfer stopped: the byte count settles well short of the file.
  uint64_t a = hub_.BodyBytesServed("model.safetensors");
  ASSERT_TRUE(WaitFor([&] {
    uint64_t before = hub_.BodyBytesServed("model.safetensors");
    std::this_thread::sleep_for(milliseconds(300));
    return hub_.BodyBytesServed("model.safetensors") == before;
  }, seconds(5)));
  EXPECT_LT(hub_.BodyBytesServed("model.safetensors"), a + (2u << 20));
  EXPECT_LT(hub_.BodyBytesServed("model.safetensors"), 8u << 20);
  EXPECT_EQ(daemon.Terminate(), 0);
}

TEST_F(DirectoryModeTest, MalformedYamlAffectsOnlyItsFile) {
  AddRepo("org/good", SmallModelFiles(1000, 18));
  WriteManifest("good.yaml", Manifest("good", "org/good"));
  WriteManifest("bad.yaml", "apiVersion: modelcache.dev/v1alpha1\nkind: ModelCache\n"
                            "metadata:\n  name: bad\nspec:\n  source: [unclosed\n");
  Daemon daemon(DaemonOptions());
  daemon.Start();
  auto mc = WaitReady("good");
  ASSERT_TRUE(mc && IsReady(*mc)) << daemon.Log();
  EXPECT_TRUE(WaitFor([&] { return daemon.Log().find("bad.yaml:") != std::string::npos; }))
      << daemon.Log();
  auto v = RunModelcache({"validate", watch_dir() + "/bad.yaml"});
  EXPECT_EQ(v.exit_code, 1);
  EXPECT_NE(v.out.find("bad.yaml:"), std::string::npos) << v.out;
}

TEST_F(DirectoryModeTest, DuplicateNamesFailBothNamingBothFiles) {
  AddRepo("org/dup", SmallModelFiles(1000, 19));
  WriteManifest("one.yaml", Manifest("dup", "org/dup"));
  WriteManifest("two.yaml", Manifest("dup", "org/dup", "    revision: main\n"));
  Daemon daemon(DaemonOptions());
  daemon.Start();
  auto mc = WaitForStatus(state_dir(), "dup",
                          [](const auto& m) { return m.status.phase == crds::kPhaseFailed; });
  ASSERT_TRUE(mc) << daemon.Log();
  EXPECT_EQ(ReadyReason(*mc), "InvalidSpec");
  const crds::Condition* c = crds::FindCondition(mc->status.conditions, "Ready");
  EXPECT_NE(c->message.find("one.yaml"), std::string::npos) << c->message;
  EXPECT_NE(c->message.find("two.yaml"), std::string::npos) << c->message;
  EXPECT_EQ(hub_.Requests("/api/models/org/dup"), 0);
}

TEST_F(DirectoryModeTest, InvalidSpecIsReportedWithFieldPaths) {
  WriteManifest("inv.yaml", Manifest("invalid", "a//b",
                                     "  shard:\n    engine: tgi\n    dtype: fp8\n"));
  Daemon daemon(DaemonOptions());
  daemon.Start();
  auto mc = WaitForStatus(state_dir(), "invalid",
                          [](const auto& m) { return m.status.phase == crds::kPhaseFailed; });
  ASSERT_TRUE(mc) << daemon.Log();
  EXPECT_EQ(ReadyReason(*mc), "InvalidSpec");
  const crds::Condition* c = crds::FindCondition(mc->status.conditions, "Ready");
  EXPECT_NE(c->message.find("spec.source.repo"), std::string::npos) << c->message;
  EXPECT_NE(c->message.find("spec.shard.engine"), std::string::npos) << c->message;
  EXPECT_NE(c->message.find("spec.shard.dtype"), std::string::npos) << c->message;
}

TEST_F(DirectoryModeTest, ReadyResourcesNeedNoNetworkAfterRestart) {
  AddRepo("org/cached", SmallModelFiles(100000, 20));
  WriteManifest("c.yaml", Manifest("cached", "org/cached"));
  auto options = DaemonOptions();
  {
    Daemon daemon(options);
    daemon.Start();
    ASSERT_TRUE(WaitReady("cached")) << daemon.Log();
    EXPECT_EQ(daemon.Terminate(), 0);
  }
  hub_.ResetCounters();
  Daemon again(options);
  again.Start();
  ASSERT_TRUE(WaitFor([&] { return again.Log().find("initial sync done") != std::string::npos; }))
      << again.Log();
  // A new resource for a model already in the store becomes Ready without downloading bytes.
  auto start = std::chrono::steady_clock::now();
  WriteManifest("c2.yaml", Manifest("cached-again", "org/cached"));
  auto mc = WaitReady("cached-again");
  auto elapsed = std::chrono::steady_clock::now() - start;
  ASSERT_TRUE(mc && IsReady(*mc)) << again.Log();
  std::printf("[ measure ] manifest for an already-cached model -> Ready: %lld ms\n",
              static_cast<long long>(
                  std::chrono::duration_cast<milliseconds>(elapsed).count()));
  EXPECT_EQ(hub_.BodyBytesServed("model.safetensors"), 0u);
  EXPECT_EQ(hub_.BodyBytesServed("config.json"), 0u);
  // The Ready resource from before the restart was not resolved again.
  EXPECT_EQ(hub_.Requests("/api/models/org/cached/revision"), 1);
}

TEST_F(DirectoryModeTest, ForceReverifiesAndRepairsTheStore) {
  auto files = SmallModelFiles(200000, 21);
  AddRepo("org/force", files);
  WriteManifest("f.yaml", Manifest("force", "org/force"));
  Daemon daemon(DaemonOptions());
  daemon.Start();
  auto mc = WaitReady("force");
  ASSERT_TRUE(mc) << daemon.Log();
  std::string blob = store_dir() + "/hub/models--org--force/blobs/" +
                     Sha256Hex(files["model.safetensors"]);
  {
    // Damage the blob in place (same size), as a bad disk would.
    std::fstream io(blob, std::ios::in | std::ios::out | std::ios::binary);
    io.seekp(1000);
    io.put('\x5a');
  }
  ASSERT_NE(*Sha256File(blob), Sha256Hex(files["model.safetensors"]));
  WriteManifest("f.yaml", Manifest("force", "org/force", "  force: 1\n"));
  auto repaired = WaitForStatus(state_dir(), "force", [](const auto& m) {
    return IsReady(m) && m.status.observed_generation == 2;
  });
  ASSERT_TRUE(repaired) << daemon.Log();
  EXPECT_EQ(*Sha256File(blob), Sha256Hex(files["model.safetensors"]));
}

TEST_F(DirectoryModeTest, RefreshIntervalPublishesANewVersionWhenTheBranchMoves) {
  AddRepo("org/refresh", SmallModelFiles(1000, 22));
  WriteManifest("r.yaml", Manifest("refresh", "org/refresh", "  refreshInterval: 1s\n"));
  Daemon daemon(DaemonOptions());
  daemon.Start();
  auto first = WaitReady("refresh");
  ASSERT_TRUE(first) << daemon.Log();
  std::string dir2 = repos_dir() + "/org/refresh/next";
  WriteTree(dir2, SmallModelFiles(2000, 23));
  hub_.SetRef("model", "org/refresh", "main", dir2);
  std::string next = hub_.CommitOf("model", "org/refresh", "main");
  ASSERT_NE(next, first->status.resolved_revision);
  auto moved = WaitForStatus(state_dir(), "refresh", [&](const auto& m) {
    return IsReady(m) && m.status.resolved_revision == next;
  });
  ASSERT_TRUE(moved) << daemon.Log();
  EXPECT_NE(moved->status.artifact->version, first->status.artifact->version);
  EXPECT_EQ(Slurp(store_dir() + "/hub/models--org--refresh/refs/main"), next);
}

TEST_F(DirectoryModeTest, ThousandManifestsAllReachAStatus) {
  AddRepo("org/shared", SmallModelFiles(1000, 24));
  for (int i = 0; i < 1000; ++i) {
    std::ofstream(watch_dir() + "/m" + std::to_string(i) + ".yaml")
        << Manifest("m" + std::to_string(i), "org/shared");
  }
  auto options = DaemonOptions();
  options.extra_args.insert(options.extra_args.end(), {"--workers", "4"});
  Daemon daemon(options);
  auto start = std::chrono::steady_clock::now();
  daemon.Start();
  bool all = WaitFor(
      [&] {
        for (int i = 999; i >= 0; --i) {
          auto mc = ReadStatus(state_dir(), "default", "m" + std::to_string(i));
          if (!mc || !IsReady(*mc)) {
            return false;
          }
        }
        return true;
      },
      seconds(150));
  auto elapsed = std::chrono::steady_clock::now() - start;
  ASSERT_TRUE(all) << daemon.Log().substr(0, 4000);
  std::printf("[ measure ] 1000 manifests -> all Ready: %lld ms\n",
              static_cast<long long>(
                  std::chrono::duration_cast<milliseconds>(elapsed).count()));
  EXPECT_EQ(daemon.Terminate(), 0);
}

TEST_F(DirectoryModeTest, ShardedArtifactForTwoGpus) {
  std::string dir = repos_dir() + "/org/qwen3-tiny/main";
  auto gen = std::system((std::string(MC_MAKE_CHECKPOINT) + " " + dir +
                          " --arch qwen3 --size tiny > /dev/null").c_str());
  ASSERT_EQ(gen, 0);
  FakeRepoSpec spec;
  spec.id = "org/qwen3-tiny";
  spec.refs["main"] = dir;
  hub_.AddRepo(spec);
  WriteManifest("q.yaml", Manifest("qwen-tp2", "org/qwen3-tiny",
                                   "  accelerator: \"L4:2\"\n  shard:\n    engine: vllm\n"));
  Daemon daemon(DaemonOptions());
  daemon.Start();
  auto mc = WaitReady("qwen-tp2");
  ASSERT_TRUE(mc && IsReady(*mc)) << daemon.Log();
  const std::string& art = mc->status.artifact->path;
  EXPECT_TRUE(fs::exists(art + "/model-rank-0-part-0.safetensors"));
  EXPECT_TRUE(fs::exists(art + "/model-rank-1-part-0.safetensors"));
  EXPECT_FALSE(fs::exists(art + "/model-rank-2-part-0.safetensors"));
  EXPECT_TRUE(fs::exists(art + "/config.json"));
  EXPECT_FALSE(fs::exists(art + "/model.safetensors"));
  auto manifest = nlohmann::json::parse(Slurp(art + "/modelcache.json"));
  EXPECT_EQ(manifest["shard"]["tensorParallelSize"], 2);
  EXPECT_EQ(manifest["shard"]["engine"], "vllm");
  // The HF cache holds the original checkpoint, untouched.
  EXPECT_TRUE(fs::exists(store_dir() + "/hub/models--org--qwen3-tiny/snapshots/" +
                         mc->status.resolved_revision + "/model.safetensors"));

  // The same repo unsharded is a different artifact id (the id covers the shard settings).
  WriteManifest("q1.yaml", Manifest("qwen-plain", "org/qwen3-tiny",
                                    "  artifactName: qwen-plain\n"));
  auto plain = WaitReady("qwen-plain");
  ASSERT_TRUE(plain && IsReady(*plain)) << daemon.Log();
  EXPECT_NE(plain->status.artifact->id.substr(plain->status.artifact->id.find('@')),
            mc->status.artifact->id.substr(mc->status.artifact->id.find('@')));
}

TEST_F(DirectoryModeTest, ShardingErrorsAreReportedWithTheirReason) {
  auto files = SmallModelFiles(1000, 28);
  files["config.json"] = R"({"architectures":["GPT2LMHeadModel"],"model_type":"gpt2"})";
  AddRepo("org/gpt2ish", files);
  WriteManifest("g.yaml", Manifest("gpt", "org/gpt2ish", "  shard:\n    tensorParallelSize: 2\n"));
  Daemon daemon(DaemonOptions());
  daemon.Start();
  auto mc = WaitForStatus(state_dir(), "gpt",
                          [](const auto& m) { return m.status.phase == crds::kPhaseFailed; });
  ASSERT_TRUE(mc) << daemon.Log();
  EXPECT_EQ(ReadyReason(*mc), "UnsupportedArchitecture");
  const crds::Condition* c = crds::FindCondition(mc->status.conditions, "Ready");
  EXPECT_NE(c->message.find("GPT2LMHeadModel"), std::string::npos) << c->message;
  // No half-written artifact is left behind, and the refusal came from config.json alone: the
  // weights were never downloaded (the store holds one blob, config.json's).
  EXPECT_FALSE(fs::exists(store_dir() + "/artifacts/gpt2ish/current"));
  EXPECT_EQ(HubCacheBlobs(store_dir()).size(), 1u) << daemon.Log();
}

TEST_F(DirectoryModeTest, JsonLogsAreOneObjectPerLineWithTheKey) {
  AddRepo("org/logged", SmallModelFiles(1000, 26));
  WriteManifest("l.yaml", Manifest("logged", "org/logged"));
  auto options = DaemonOptions();
  options.extra_args.insert(options.extra_args.end(), {"--log-format", "json"});
  Daemon daemon(options);
  daemon.Start();
  ASSERT_TRUE(WaitReady("logged")) << daemon.Log();
  EXPECT_EQ(daemon.Terminate(), 0);
  std::istringstream lines(daemon.Log());
  std::string line;
  int transitions = 0;
  while (std::getline(lines, line)) {
    auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    ASSERT_TRUE(j.is_object()) << line;
    ASSERT_TRUE(j.contains("ts") && j.contains("level") && j.contains("msg")) << line;
    std::string msg = j["msg"];
    if (msg.rfind("default/logged: ", 0) == 0 && msg.find(" -> ") != std::string::npos) {
      ++transitions;
    }
  }
  // New -> Resolving, Resolving -> Ready at least.
  EXPECT_GE(transitions, 2) << daemon.Log();
}

TEST_F(DirectoryModeTest, SigtermMidDownloadExitsCleanlyAndResumes) {
  auto files = SmallModelFiles(8 << 20, 27);
  AddRepo("org/term", files);
  hub_.AddFault(SlowWeights(2 << 20));
  WriteManifest("t.yaml", Manifest("term", "org/term"));
  auto options = DaemonOptions();
  {
    Daemon daemon(options);
    daemon.Start();
    ASSERT_TRUE(WaitForStatus(state_dir(), "term", [](const auto& m) {
      return m.status.progress && m.status.progress->bytes_done > (1u << 20);
    })) << daemon.Log();
    auto start = std::chrono::steady_clock::now();
    EXPECT_EQ(daemon.Terminate(seconds(10)), 0) << daemon.Log();
    std::printf("[ measure ] SIGTERM mid-download -> exit: %lld ms\n",
                static_cast<long long>(std::chrono::duration_cast<milliseconds>(
                                           std::chrono::steady_clock::now() - start)
                                           .count()));
  }
  hub_.ClearFaults();
  Daemon again(options);
  again.Start();
  auto mc = WaitReady("term");
  ASSERT_TRUE(mc && IsReady(*mc)) << again.Log();
  EXPECT_LT(hub_.BodyBytesServed("model.safetensors"), (8u << 20) + (2u << 20));
}

}  // namespace
}  // namespace modelcache::itest
