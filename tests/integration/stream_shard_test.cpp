// Sharding while downloading (docs/sharding.md): the daemon's rank files, written as the weights
// arrive, are byte-identical to `modelcache shard` run on the finished download, also after a
// kill -9 in the middle of the download and a weight file that fails verification once.

#include <cstdlib>
#include <filesystem>
#include <string>

#include <gtest/gtest.h>

#include "tests/fixtures/hub/fake_hub.h"
#include "tests/integration/harness.h"

namespace modelcache::itest {
namespace {

namespace fs = std::filesystem;
using modelcache::testing::FakeRepoSpec;
using modelcache::testing::Fault;

class StreamShardTest : public DaemonTest {};

TEST_F(StreamShardTest, KillNineAndARefetchStillGiveTheRankFilesOfShardAfterDownload) {
  // About 9 MB of bf16 in two files, sharded to tp 2 in float16 (every element converted, so an
  // element cut between two blocks is exercised) and parts of at most 1 MiB.
  std::string dir = repos_dir() + "/org/llama-small/main";
  ASSERT_EQ(std::system((std::string(MC_MAKE_CHECKPOINT) + " " + dir +
                         " --arch llama3 --size tiny --hidden 256 --intermediate 768 --layers 4"
                         " --vocab 8000 --files 2 > /dev/null")
                            .c_str()),
            0);
  FakeRepoSpec spec;
  spec.id = "org/llama-small";
  spec.refs["main"] = dir;
  hub_.AddRepo(spec);
  Fault slow;
  slow.kind = Fault::Kind::Slow;
  slow.path_glob = "model-*.safetensors";
  slow.bytes_per_second = 1 << 20;  // per request; two at a time: about 7 s for the repo
  slow.count = -1;
  hub_.AddFault(slow);
  WriteManifest("l.yaml", Manifest("llama-tp2", "org/llama-small",
                                   "  shard:\n    tensorParallelSize: 2\n    dtype: float16\n"
                                   "    maxFileSize: 1MiB\n"));
  // Ranges of one 2 MiB block each, so that blocks are handed to the sharder from memory.
  auto options = DaemonOptions({"--chunk-size", "2MiB", "--max-connections-per-artifact", "2"});
  auto served = [&] {
    return hub_.BodyBytesServed("model-00001-of-00002.safetensors") +
           hub_.BodyBytesServed("model-00002-of-00002.safetensors");
  };
  {
    Daemon daemon(options);
    daemon.Start();
    ASSERT_TRUE(WaitFor([&] { return served() > (4u << 20); }, std::chrono::seconds(60)))
        << daemon.Log();
    daemon.Kill9();
    auto killed = ReadStatus(state_dir(), "default", "llama-tp2");
    ASSERT_TRUE(killed && !IsReady(*killed)) << "the download ended before the kill";
    EXPECT_NE(daemon.Log().find("sharding while downloading"), std::string::npos) << daemon.Log();
  }
  hub_.ClearFaults();
  // The second file fails verification once (one byte flipped far past its header): it is
  // fetched again and its slices written again.
  Fault corrupt;
  corrupt.kind = Fault::Kind::Corrupt;
  corrupt.path_glob = "model-00002-of-00002.safetensors";
  corrupt.bytes = 1u << 20;
  corrupt.count = 1;
  hub_.AddFault(corrupt);
  Daemon again(options);
  again.Start();
  auto mc = WaitReady("llama-tp2");
  ASSERT_TRUE(mc && IsReady(*mc)) << again.Log();
  // Every rank byte came from the bytes the transfer hashed: the resumed files' data on disk
  // first, then the rest as it arrived, the refetched file from 0 again. None was read back.
  EXPECT_NE(again.Log().find("sharded while downloading; 0 B of the weights read back"),
            std::string::npos)
      << again.Log();
  EXPECT_NE(again.Log().find("model-00002-of-00002.safetensors: expected"), std::string::npos)
      << again.Log();

  // The same checkpoint sharded after the fact, from the HF cache snapshot.
  const std::string snapshot =
      store_dir() + "/hub/models--org--llama-small/snapshots/" + mc->status.resolved_revision;
  const std::string out = tmp_ / "after";
  auto r = RunModelcache(
      {"shard", snapshot, out, "--tp", "2", "--dtype", "float16", "--max-file-size", "1MiB"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string& art = mc->status.artifact->path;
  int compared = 0;
  for (const auto& e : fs::directory_iterator(out)) {
    const std::string name = e.path().filename().string();
    ASSERT_TRUE(fs::exists(art + "/" + name)) << name;
    EXPECT_TRUE(Slurp(e.path().string()) == Slurp(art + "/" + name)) << name << " differs";
    compared += name.rfind("model-rank-", 0) == 0 ? 1 : 0;
  }
  EXPECT_GE(compared, 4);  // several parts per rank
  // The HF cache still holds the original files.
  EXPECT_TRUE(fs::exists(snapshot + "/model-00001-of-00002.safetensors"));
  EXPECT_TRUE(fs::exists(snapshot + "/model.safetensors.index.json"));
}

}  // namespace
}  // namespace modelcache::itest
