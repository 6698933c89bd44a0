// Store retention end to end: the daemon's garbage collection under a quota, `modelcache gc`, and
// drift healing with --verify-interval, against the Hub imitation.

#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

#include "common/sha256.h"
#include "tests/fixtures/hub/fake_hub.h"
#include "tests/integration/harness.h"

namespace modelcache::itest {
namespace {

namespace fs = std::filesystem;
using modelcache::testing::FakeHub;
using modelcache::testing::FakeRepoSpec;
using std::chrono::seconds;

bool Exists(const std::string& path) {
  std::error_code ec;
  return fs::exists(fs::symlink_status(path, ec));
}

std::string ConditionText(const crds::ModelCache& mc, const std::string& type) {
  const crds::Condition* c = crds::FindCondition(mc.status.conditions, type);
  return c == nullptr ? "" : c->status + " " + c->reason + ": " + c->message;
}

class GcTest : public DaemonTest {
 protected:
  static constexpr size_t kWeights = 300000;

  // A repo with branches r1..rN, each with its own weights (tokenizer.json is the same in all).
  void AddRepo(const std::string& id, int revisions) {
    FakeRepoSpec spec;
    spec.id = id;
    for (int i = 1; i <= revisions; ++i) {
      std::string dir = tmp_ / ("repos/" + id + "/r" + std::to_string(i));
      files_[i] = SmallModelFiles(kWeights, 100 + i);
      WriteTree(dir, files_[i]);
      spec.refs["r" + std::to_string(i)] = dir;
    }
    hub_.AddRepo(spec);
  }

  // Points resource `name` at branch r<i> of `repo` and waits until it is Ready there.
  std::optional<crds::ModelCache> CacheRevision(const std::string& name, const std::string& repo,
                                                int i) {
    std::string rev = "r" + std::to_string(i);
    WriteFileRenamed(watch_dir() + "/" + name + ".yaml",
                     Manifest(name, repo, "    revision: " + rev + "\n"));
    std::string commit = hub_.CommitOf("model", repo, rev);
    return WaitForStatus(state_dir(), name, [&](const crds::ModelCache& mc) {
      return IsReady(mc) && mc.status.resolved_revision == commit;
    });
  }

  std::string VersionDir(const crds::ModelCache& mc) const { return mc.status.artifact->path; }

  std::map<int, std::map<std::string, std::string>> files_;
};

TEST_F(GcTest, QuotaKeepsReferencedVersionsAndRemovesTheOldestUnreferenced) {
  AddRepo("org/gc", 4);
  // Room for two and a half revisions: publishing the third must evict the first, the fourth
  // the second; the third (no longer referenced) fits and stays.
  uint64_t limit = TotalSize(files_[1]) * 5 / 2;
  Daemon daemon(DaemonOptions(
      {"--store-max-bytes", std::to_string(limit), "--keep-versions", "1", "--gc-interval", "1h"}));
  daemon.Start();
  std::vector<crds::ModelCache> ready;
  for (int i = 1; i <= 3; ++i) {
    auto mc = CacheRevision("gc", "org/gc", i);
    ASSERT_TRUE(mc) << daemon.Log();
    ready.push_back(*mc);
  }
  ASSERT_TRUE(WaitFor([&] {
    return !Exists(VersionDir(ready[0])) && !Exists(store_dir() + "/hub/models--org--gc/blobs/" +
                                                    Sha256Hex(files_[1]["model.safetensors"]));
  })) << daemon.Log();
  EXPECT_TRUE(Exists(VersionDir(ready[1])));
  auto fourth = CacheRevision("gc", "org/gc", 4);
  ASSERT_TRUE(fourth) << daemon.Log();
  ready.push_back(*fourth);
  std::string repo = store_dir() + "/hub/models--org--gc";
  // The version goes first, then the snapshot it was built from and its blobs.
  ASSERT_TRUE(WaitFor([&] {
    return !Exists(VersionDir(ready[1])) &&
           !Exists(repo + "/blobs/" + Sha256Hex(files_[2]["model.safetensors"]));
  })) << daemon.Log();

  // Referenced (current, reported) and the unreferenced one that fits stay.
  EXPECT_TRUE(Exists(VersionDir(ready[2])));
  EXPECT_TRUE(Exists(VersionDir(ready[3])));
  EXPECT_FALSE(Exists(repo + "/snapshots/" + ready[0].status.resolved_revision));
  EXPECT_FALSE(Exists(repo + "/snapshots/" + ready[1].status.resolved_revision)) << daemon.Log();
  EXPECT_TRUE(Exists(repo + "/snapshots/" + ready[3].status.resolved_revision));
  EXPECT_FALSE(Exists(repo + "/blobs/" + Sha256Hex(files_[1]["model.safetensors"])));
  // tokenizer.json is the same blob in every revision: still linked, so still there.
  std::ifstream tokenizer(repo + "/snapshots/" + ready[3].status.resolved_revision +
                          "/tokenizer.json");
  EXPECT_EQ(std::string(std::istreambuf_iterator<char>(tokenizer), {}),
            files_[1]["tokenizer.json"]);
  EXPECT_EQ(fs::read_symlink(store_dir() + "/artifacts/gc/current").string(),
            ready[3].status.artifact->version);
  EXPECT_NE(daemon.Log().find("gc: removed"), std::string::npos) << daemon.Log();

  // The resource says what the store did.
  std::string v2 = ready[1].status.artifact->version;
  auto mc = WaitForStatus(state_dir(), "gc", [&](const crds::ModelCache& m) {
    const crds::Condition* c = crds::FindCondition(m.status.conditions, "Retained");
    return c != nullptr && c->reason == "Evicted" && c->message.find(v2) != std::string::npos;
  });
  ASSERT_TRUE(mc) << daemon.Log();
  EXPECT_NE(ConditionText(*mc, "Retained").find("evicted 1 older version of gc"), std::string::npos)
      << ConditionText(*mc, "Retained");
  EXPECT_TRUE(IsReady(*mc));
}

TEST_F(GcTest, OverTheLimitWithOnlyReferencedDataKeepsItAndSaysSo) {
  AddRepo("org/big", 1);
  Daemon daemon(DaemonOptions({"--store-max-bytes", "1KiB", "--gc-interval", "1h"}));
  daemon.Start();
  auto mc = CacheRevision("big", "org/big", 1);
  ASSERT_TRUE(mc) << daemon.Log();
  auto kept = WaitForStatus(state_dir(), "big", [](const crds::ModelCache& m) {
    const crds::Condition* c = crds::FindCondition(m.status.conditions, "Retained");
    return c != nullptr && c->reason == "Kept";
  });
  ASSERT_TRUE(kept) << daemon.Log();
  EXPECT_TRUE(IsReady(*kept));
  EXPECT_NE(ConditionText(*kept, "Retained").find("over its limits"), std::string::npos)
      << ConditionText(*kept, "Retained");
  EXPECT_TRUE(Exists(VersionDir(*mc) + "/model.safetensors"));
  EXPECT_TRUE(Exists(store_dir() + "/hub/models--org--big/snapshots/" +
                     mc->status.resolved_revision + "/model.safetensors"));
  EXPECT_NE(daemon.Log().find("still over the limits"), std::string::npos) << daemon.Log();
}

// A hand-made huggingface_hub download (`hf download org/handmade`) in the store's hub cache, as
// it lands when prefetch's store is HF_HOME: blob, snapshot link, ref. Returns the snapshot file.
std::string PlaceForeignDownload(const std::string& store) {
  std::string repo = store + "/hub/models--org--handmade";
  std::string commit(40, 'f');
  std::string content = "{\"hand\": \"made\"}\n";
  fs::create_directories(repo + "/blobs");
  fs::create_directories(repo + "/snapshots/" + commit);
  fs::create_directories(repo + "/refs");
  std::ofstream(repo + "/blobs/" + Sha256Hex(content)) << content;
  fs::create_symlink("../../blobs/" + Sha256Hex(content),
                     repo + "/snapshots/" + commit + "/config.json");
  std::ofstream(repo + "/refs/main") << commit;
  return repo + "/snapshots/" + commit + "/config.json";
}

// How many GC runs a daemon has logged that found the store over its limits.
size_t OverLimitRuns(const Daemon& daemon) {
  size_t n = 0;
  std::string log = daemon.Log();
  for (size_t at = log.find("still over the limits"); at != std::string::npos;
       at = log.find("still over the limits", at + 1)) {
    ++n;
  }
  return n;
}

TEST_F(GcTest, TwoDaemonsWithQuotasOnOneStoreNeverRemoveEachOthersReadyArtifacts) {
  AddRepo("org/alpha", 1);
  AddRepo("org/beta", 1);
  // Two daemons of one store (two watch directories, their own state), each with a quota that
  // the other's artifact alone exceeds.
  const std::string foreign = PlaceForeignDownload(store_dir());
  Daemon::Options a_options =
      DaemonOptions({"--store-max-bytes", "1KiB", "--gc-interval", "200ms"});
  Daemon::Options b_options = a_options;
  b_options.watch_dir = tmp_ / "manifests-b";
  b_options.state_dir = tmp_ / "state-b";
  fs::create_directories(b_options.watch_dir);
  Daemon b(b_options);
  b.Start();
  WriteFileRenamed(b_options.watch_dir + "/beta.yaml",
                   Manifest("beta", "org/beta", "    revision: r1\n"));
  auto beta = WaitForStatus(b_options.state_dir, "beta", IsReady);
  ASSERT_TRUE(beta && IsReady(*beta)) << b.Log();

  Daemon a(a_options);
  a.Start();
  auto alpha = CacheRevision("alpha", "org/alpha", 1);
  ASSERT_TRUE(alpha && IsReady(*alpha)) << a.Log();
  // Both daemons' GC runs again after both artifacts were published.
  size_t a_runs = OverLimitRuns(a);
  size_t b_runs = OverLimitRuns(b);
  ASSERT_TRUE(WaitFor([&] { return OverLimitRuns(a) > a_runs && OverLimitRuns(b) > b_runs; }))
      << a.Log() << b.Log();

  for (const auto* mc : {&*alpha, &*beta}) {
    std::string repo = store_dir() + "/hub/models--org--" + mc->spec.source.repo.substr(4);
    EXPECT_TRUE(Exists(VersionDir(*mc) + "/model.safetensors")) << mc->metadata.name;
    EXPECT_TRUE(Exists(repo + "/snapshots/" + mc->status.resolved_revision + "/config.json"))
        << mc->metadata.name;
    EXPECT_FALSE(fs::is_empty(repo + "/blobs")) << mc->metadata.name;
  }
  // The quota GC of both never touched the hand-made download either.
  EXPECT_EQ(Slurp(foreign), "{\"hand\": \"made\"}\n");
  EXPECT_EQ(a.Log().find("gc: removed version"), std::string::npos) << a.Log();
  EXPECT_EQ(b.Log().find("gc: removed version"), std::string::npos) << b.Log();
  auto still = ReadStatus(b_options.state_dir, "default", "beta");
  ASSERT_TRUE(still);
  EXPECT_TRUE(IsReady(*still));
  // Each daemon's references are in its record under the store.
  size_t records = 0;
  for (const auto& e : fs::directory_iterator(store_dir() + "/users")) {
    records += e.path().extension() == ".json" ? 1 : 0;
  }
  EXPECT_EQ(records, 2U);
  EXPECT_EQ(a.Terminate(), 0);
  EXPECT_EQ(b.Terminate(), 0);
}

TEST_F(GcTest, GcCommandDryRunThenRemovesWhatNoResourceReferences) {
  AddRepo("org/kept", 2);
  FakeRepoSpec other;
  other.id = "org/dropped";
  std::string other_dir = tmp_ / "repos/dropped";
  auto other_files = SmallModelFiles(50000, 7);
  WriteTree(other_dir, other_files);
  other.refs["main"] = other_dir;
  hub_.AddRepo(other);

  const std::string foreign = PlaceForeignDownload(store_dir());
  Daemon daemon(DaemonOptions({}));
  daemon.Start();
  auto v1 = CacheRevision("kept", "org/kept", 1);
  ASSERT_TRUE(v1) << daemon.Log();
  auto v2 = CacheRevision("kept", "org/kept", 2);
  ASSERT_TRUE(v2) << daemon.Log();
  WriteFileRenamed(watch_dir() + "/dropped.yaml", Manifest("dropped", "org/dropped"));
  auto dropped = WaitForStatus(state_dir(), "dropped", IsReady);
  ASSERT_TRUE(dropped) << daemon.Log();
  // Deleting the resource drops its reference (the daemon without limits removes nothing).
  fs::remove(watch_dir() + "/dropped.yaml");
  ASSERT_TRUE(WaitFor([&] { return !ReadStatus(state_dir(), "default", "dropped"); }));
  EXPECT_EQ(daemon.Terminate(), 0);
  ASSERT_TRUE(Exists(VersionDir(*dropped)));

  std::vector<std::string> args = {"gc",        "--store",         store_dir(), "--state-dir",
                                   state_dir(), "--keep-versions", "0"};
  std::vector<std::string> dry = args;
  dry.push_back("--dry-run");
  auto plan = RunModelcache(dry);
  ASSERT_EQ(plan.exit_code, 0) << plan.err;
  EXPECT_NE(plan.out.find("would remove\tversion\t" + VersionDir(*v1) + "\t"), std::string::npos)
      << plan.out;
  EXPECT_NE(plan.out.find("would remove\tversion\t" + VersionDir(*dropped) + "\t"),
            std::string::npos)
      << plan.out;
  EXPECT_NE(plan.out.find("no resource references artifact dropped"), std::string::npos)
      << plan.out;
  EXPECT_EQ(plan.out.find(VersionDir(*v2) + "\t"), std::string::npos) << plan.out;
  EXPECT_NE(plan.out.find("dry run: nothing was removed"), std::string::npos) << plan.out;
  EXPECT_TRUE(Exists(VersionDir(*v1)));
  EXPECT_TRUE(Exists(VersionDir(*dropped)));

  auto done = RunModelcache(args);
  ASSERT_EQ(done.exit_code, 0) << done.err;
  EXPECT_NE(done.out.find("removed\tversion\t" + VersionDir(*v1) + "\t"), std::string::npos)
      << done.out;
  EXPECT_NE(done.out.find("total: removed"), std::string::npos) << done.out;
  EXPECT_FALSE(Exists(VersionDir(*v1)));
  EXPECT_FALSE(Exists(store_dir() + "/artifacts/dropped"));
  EXPECT_TRUE(fs::is_empty(store_dir() + "/hub/models--org--dropped/blobs"));
  EXPECT_TRUE(Exists(VersionDir(*v2)));
  // What stays still reads as the Hub cache and as the artifact.
  std::ifstream weights(store_dir() + "/hub/models--org--kept/snapshots/" +
                        v2->status.resolved_revision + "/model.safetensors");
  EXPECT_EQ(std::string(std::istreambuf_iterator<char>(weights), {}),
            files_[2]["model.safetensors"]);

  // A hand-made huggingface_hub download is not modelcache's to remove.
  EXPECT_EQ(Slurp(foreign), "{\"hand\": \"made\"}\n");
  EXPECT_EQ(done.out.find("handmade"), std::string::npos) << done.out;
  EXPECT_EQ(Slurp(store_dir() + "/hub/models--org--handmade/refs/main"), std::string(40, 'f'));

  // A second run has nothing left to do.
  auto again = RunModelcache(args);
  EXPECT_NE(again.out.find("total: removed 0 items"), std::string::npos) << again.out;

  // Without the status records, the daemon's record among the store's users (live for
  // kStoreUserExpiry after it stopped) still names what it held.
  auto by_record =
      RunModelcache({"gc", "--store", store_dir(), "--state-dir", tmp_ / "no-such-state"});
  ASSERT_EQ(by_record.exit_code, 0) << by_record.err;
  EXPECT_NE(by_record.out.find("total: removed 0 items"), std::string::npos) << by_record.out;
  // Without either, gc refuses instead of treating everything as unreferenced.
  fs::remove_all(store_dir() + "/users");
  auto refused =
      RunModelcache({"gc", "--store", store_dir(), "--state-dir", tmp_ / "no-such-state"});
  EXPECT_EQ(refused.exit_code, 1);
  EXPECT_NE(refused.err.find("--state-dir"), std::string::npos) << refused.err;
  EXPECT_TRUE(Exists(VersionDir(*v2)));
}

TEST_F(GcTest, VerifyIntervalHealsACorruptedAndADeletedBlob) {
  AddRepo("org/heal", 1);
  Daemon daemon(DaemonOptions({"--verify-interval", "300ms"}));
  daemon.Start();
  auto mc = CacheRevision("heal", "org/heal", 1);
  ASSERT_TRUE(mc) << daemon.Log();
  const std::string weights = files_[1]["model.safetensors"];
  std::string artifact_file = VersionDir(*mc) + "/model.safetensors";
  std::string blob = store_dir() + "/hub/models--org--heal/blobs/" + Sha256Hex(weights);
  auto verified = WaitForStatus(state_dir(), "heal", [](const crds::ModelCache& m) {
    const crds::Condition* c = crds::FindCondition(m.status.conditions, "Verified");
    return c != nullptr && c->reason == "Verified" && c->status == "True";
  });
  ASSERT_TRUE(verified) << daemon.Log();

  // 1. One byte changed on disk (the artifact file and the blob are one inode).
  {
    std::fstream io(artifact_file, std::ios::in | std::ios::out | std::ios::binary);
    io.seekp(12345);
    io.put(static_cast<char>(weights[12345] ^ 0x01));
  }
  ASSERT_NE(*Sha256File(blob), Sha256Hex(weights));
  auto healed = WaitForStatus(state_dir(), "heal", [](const crds::ModelCache& m) {
    const crds::Condition* c = crds::FindCondition(m.status.conditions, "Verified");
    return IsReady(m) && c != nullptr && c->reason == "Healed" &&
           c->message.find("changed on disk") != std::string::npos;
  });
  ASSERT_TRUE(healed) << daemon.Log();
  EXPECT_NE(ConditionText(*healed, "Verified").find("re-fetched model.safetensors"),
            std::string::npos)
      << ConditionText(*healed, "Verified");
  EXPECT_EQ(*Sha256File(blob), Sha256Hex(weights));
  EXPECT_EQ(*Sha256File(artifact_file), Sha256Hex(weights));
  EXPECT_EQ(healed->status.artifact->version, mc->status.artifact->version);

  // 2. A blob deleted from the hub cache (the artifact still holds its own link).
  std::string config_blob;
  for (const auto& e : fs::directory_iterator(store_dir() + "/hub/models--org--heal/blobs")) {
    if (*Sha256File(e.path().string()) == Sha256Hex(files_[1]["config.json"])) {
      config_blob = e.path().string();
    }
  }
  ASSERT_FALSE(config_blob.empty());
  fs::remove(config_blob);
  auto healed_again = WaitForStatus(state_dir(), "heal", [](const crds::ModelCache& m) {
    const crds::Condition* c = crds::FindCondition(m.status.conditions, "Verified");
    return IsReady(m) && c != nullptr && c->reason == "Healed" &&
           c->message.find("is missing") != std::string::npos;
  });
  ASSERT_TRUE(healed_again) << daemon.Log();
  EXPECT_NE(ConditionText(*healed_again, "Verified").find("re-fetched config.json"),
            std::string::npos)
      << ConditionText(*healed_again, "Verified");
  ASSERT_TRUE(Exists(config_blob));
  EXPECT_EQ(*Sha256File(config_blob), Sha256Hex(files_[1]["config.json"]));
  std::ifstream linked(store_dir() + "/hub/models--org--heal/snapshots/" +
                       mc->status.resolved_revision + "/config.json");
  EXPECT_EQ(std::string(std::istreambuf_iterator<char>(linked), {}), files_[1]["config.json"]);
}

TEST_F(GcTest, AHealThatFailsPartWayResumesAsAHeal) {
  AddRepo("org/retry", 1);
  Daemon daemon(DaemonOptions({"--verify-interval", "300ms"}));
  daemon.Start();
  auto mc = CacheRevision("retry", "org/retry", 1);
  ASSERT_TRUE(mc) << daemon.Log();
  const std::string weights = files_[1]["model.safetensors"];
  std::string blob = store_dir() + "/hub/models--org--retry/blobs/" + Sha256Hex(weights);
  // The Hub fails every request for the weights while the heal runs.
  modelcache::testing::Fault down;
  down.kind = modelcache::testing::Fault::Kind::Status;
  down.status = 503;
  down.path_glob = "model.safetensors";
  down.count = -1;
  hub_.AddFault(down);
  {
    std::fstream io(blob, std::ios::in | std::ios::out | std::ios::binary);
    io.seekp(777);
    io.put(static_cast<char>(weights[777] ^ 0x01));
  }
  auto failing = WaitForStatus(state_dir(), "retry", [](const crds::ModelCache& m) {
    const crds::Condition* v = crds::FindCondition(m.status.conditions, "Verified");
    const crds::Condition* r = crds::FindCondition(m.status.conditions, "Ready");
    return v != nullptr && v->reason == "Healing" && r != nullptr && r->status == "False" &&
           r->message.find("will retry") != std::string::npos;
  });
  ASSERT_TRUE(failing) << daemon.Log();
  hub_.ClearFaults();
  auto healed = WaitForStatus(state_dir(), "retry", [](const crds::ModelCache& m) {
    const crds::Condition* c = crds::FindCondition(m.status.conditions, "Verified");
    return IsReady(m) && c != nullptr && c->reason == "Healed";
  });
  ASSERT_TRUE(healed) << daemon.Log();
  EXPECT_EQ(*Sha256File(blob), Sha256Hex(weights));
  EXPECT_EQ(*Sha256File(VersionDir(*healed) + "/model.safetensors"), Sha256Hex(weights));
}

}  // namespace
}  // namespace modelcache::itest
