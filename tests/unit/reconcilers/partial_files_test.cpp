// What a job leaves behind when it ends without its files: partial downloads are kept only while
// a later job can resume them (a shutdown, a transient failure) and removed after a permanent
// failure or when the resource is deleted. And Shutdown waits for the jobs it cancels.

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "common/files.h"
#include "common/sha256.h"
#include "reconcilers/model_cache_reconciler.h"
#include "tests/fixtures/hub/fake_hub.h"
#include "tests/unit/reconcilers/reconcile_loop.h"

namespace modelcache::reconcilers {
namespace {

namespace fs = std::filesystem;
using std::chrono::milliseconds;
using testing::FakeHub;
using testing::FakeRepoSpec;
using testing::Fault;

const std::string kWeights(300000, 'w');

class PartialFilesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = ::testing::TempDir() + "partial-" + UniqueSuffix();
    fs::create_directories(root_ + "/repo");
    std::ofstream(root_ + "/repo/config.json") << "{}";
    std::ofstream(root_ + "/repo/model.safetensors", std::ios::binary) << kWeights;
  }
  void TearDown() override {
    reconciler_.reset();
    fs::remove_all(root_);
  }

  void Start(const std::string& gated = "") {
    FakeRepoSpec spec;
    spec.id = "org/model";
    spec.refs["main"] = root_ + "/repo";
    spec.gated = gated;
    hub_.AddRepo(spec);
    ASSERT_TRUE(hub_.Start());
    ReconcilerOptions o;
    o.default_store = root_ + "/store";
    o.hf_endpoint = hub_.url();
    o.backoff_base = milliseconds(5);
    o.progress_interval = milliseconds(20);
    o.wake = [this](const crds::ObjectKey& key) {
      wakes_ += 1;
      loop_.WakeCallback()(key);
    };
    reconciler_ = std::make_unique<ModelCacheReconciler>(o);
  }

  static crds::ModelCache Object() {
    crds::ModelCache mc;
    mc.metadata.name = "m";
    mc.metadata.namespace_ = "default";
    mc.metadata.generation = 1;
    mc.spec.source.repo = "org/model";
    crds::ApplyDefaults(mc);
    return mc;
  }

  // Partial downloads (.incomplete files and chunk maps) in the store's hub cache.
  std::vector<std::string> Partials() const {
    std::vector<std::string> out;
    std::error_code ec;
    for (const auto& e : fs::recursive_directory_iterator(root_ + "/store/hub", ec)) {
      std::string name = e.path().filename().string();
      if (name.find(".incomplete") != std::string::npos) {
        out.push_back(e.path().string());
      }
    }
    return out;
  }

  // Bytes of the weights' partial download (blobs/<sha256>.incomplete).
  uint64_t PartialBytes() const {
    std::string name = Sha256Hex(kWeights) + ".incomplete";
    std::error_code ec;
    for (const auto& p : Partials()) {
      if (fs::path(p).filename() == name) {
        auto size = fs::file_size(p, ec);
        return ec ? 0 : size;
      }
    }
    return 0;
  }

  // Starts the job with the weights served slowly and returns once some of them are on disk.
  void StartSlowDownload(Request& request) {
    Fault slow;
    slow.kind = Fault::Kind::Slow;
    slow.path_glob = "model.safetensors";
    slow.bytes_per_second = 20000;
    slow.count = -1;
    hub_.AddFault(slow);
    ASSERT_TRUE(reconciler_->Reconcile(request, {}));
    for (int i = 0; i < 2000 && PartialBytes() == 0; ++i) {
      std::this_thread::sleep_for(milliseconds(10));
    }
    ASSERT_GT(PartialBytes(), 0u);
  }

  std::string root_;
  FakeHub hub_;
  ReconcileLoop loop_;  // outlives reconciler_, which wakes it
  std::atomic<int> wakes_{0};
  std::unique_ptr<ModelCacheReconciler> reconciler_;
};

TEST_F(PartialFilesTest, APermanentFailureLeavesNoPartialFile) {
  Start("auto");  // gated, and the daemon has no token: /resolve answers 401
  Request request{{"default", "m"}, Object(), std::nullopt, {}};
  auto r = loop_.RunToEnd(*reconciler_, request);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().reason, Reason::Unauthorized) << r.error().ToString();
  EXPECT_EQ(Partials(), std::vector<std::string>{});
}

TEST_F(PartialFilesTest, ADeletedResourceRemovesItsPartialFiles) {
  Start();
  Request request{{"default", "m"}, Object(), std::nullopt, {}};
  StartSlowDownload(request);
  request.object.reset();
  ASSERT_TRUE(reconciler_->Reconcile(request, {}));
  reconciler_->Shutdown();  // waits for the cancelled job
  EXPECT_EQ(Partials(), std::vector<std::string>{});
}

TEST_F(PartialFilesTest, ShutdownWaitsForTheJobAndKeepsItsPartialFilesForAResume) {
  Start();
  Request request{{"default", "m"}, Object(), std::nullopt, {}};
  StartSlowDownload(request);
  reconciler_->Shutdown();
  // The job has returned (it wakes its key as it ends) ...
  EXPECT_EQ(wakes_.load(), 1);
  // ... and left its partial data for the next start.
  EXPECT_GT(PartialBytes(), 0u);
}

}  // namespace
}  // namespace modelcache::reconcilers
