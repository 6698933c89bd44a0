// StreamSharder: the rank files written while the weights arrive are byte-identical to
// ShardCheckpoint's on the same checkpoint, whatever the order of the files, the sizes of the
// pieces (elements cut in two included), restarts of a file, gaps and files never fed.

#include <filesystem>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "common/files.h"
#include "common/sha256.h"
#include "shard/safetensors.h"
#include "shard/sharder.h"
#include "tests/fixtures/checkpoint/checkpoint_gen.h"

namespace modelcache::shard {
namespace {

namespace fs = std::filesystem;

class StreamSharderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("stream-sharder-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // The checkpoint's weight files and their bytes, read the way the cache job reads them.
  struct Source {
    std::string config;
    std::optional<std::string> index;
    std::map<std::string, std::string> files;  // name -> whole file
  };
  static Source ReadSource(const std::string& ckpt) {
    Source s;
    s.config = *ReadFile(ckpt + "/config.json");
    if (fs::exists(ckpt + "/model.safetensors.index.json")) {
      s.index = *ReadFile(ckpt + "/model.safetensors.index.json");
    }
    for (const auto& e : fs::directory_iterator(ckpt)) {
      if (e.path().extension() == ".safetensors") {
        s.files[e.path().filename().string()] = *ReadFile(e.path().string());
      }
    }
    return s;
  }

  static std::unique_ptr<StreamSharder> Create(const ShardOptions& opts, const Source& s,
                                               ShardProgress& progress) {
    std::map<std::string, Checkpoint::HeaderBytes> headers;
    for (const auto& [name, bytes] : s.files) {
      uint64_t n = 0;
      for (int i = 7; i >= 0; --i) {
        n = (n << 8) | static_cast<unsigned char>(bytes[static_cast<size_t>(i)]);
      }
      headers[name] = {bytes.size(), bytes.substr(0, 8 + n)};
    }
    auto ckpt = Checkpoint::FromHeaders(opts.src_dir, s.index, headers);
    EXPECT_TRUE(ckpt) << ckpt.error().ToString();
    auto sharder = StreamSharder::Create(opts, s.config, std::move(*ckpt), progress);
    EXPECT_TRUE(sharder) << sharder.error().ToString();
    return std::move(*sharder);
  }

  // Every file of `a` has the same bytes in `b`, and the other way round.
  static void ExpectSameFiles(const std::string& a, const std::string& b) {
    std::map<std::string, std::string> left;
    std::map<std::string, std::string> right;
    for (const auto& e : fs::directory_iterator(a)) {
      left[e.path().filename().string()] = *ReadFile(e.path().string());
    }
    for (const auto& e : fs::directory_iterator(b)) {
      right[e.path().filename().string()] = *ReadFile(e.path().string());
    }
    ASSERT_EQ(left.size(), right.size());
    for (const auto& [name, bytes] : left) {
      ASSERT_EQ(right.count(name), 1u) << name;
      EXPECT_TRUE(bytes == right[name]) << name << " differs";
    }
  }

  // ShardResult::sha256 holds the sha256 of every rank file, as on disk.
  static void ExpectDigestsOfRankFiles(const ShardResult& result, const std::string& dir) {
    size_t ranks = 0;
    for (const auto& name : result.files) {
      if (name.rfind("model-rank-", 0) != 0) {
        continue;
      }
      ranks += 1;
      auto it = result.sha256.find(name);
      ASSERT_NE(it, result.sha256.end()) << name;
      EXPECT_EQ(it->second, *Sha256File(dir + "/" + name)) << name;
    }
    EXPECT_EQ(result.sha256.size(), ranks);
  }

  // A Llama checkpoint whose rank files at tp 2 are tens of MiB (the hasher steps by 8 MiB).
  static fixtures::CheckpointSpec LlamaOfTensMiB(int layers, int files) {
    fixtures::CheckpointSpec spec;
    spec.arch = "llama";
    spec.hidden = 1024;
    spec.intermediate = 2816;
    spec.heads = 8;
    spec.kv_heads = 8;
    spec.layers = layers;
    spec.vocab = 16000;
    spec.files = files;
    return spec;
  }

  std::string dir_;
};

struct StreamCase {
  std::string arch;
  int64_t tp;
  int files;
  std::string dtype;   // of the checkpoint
  std::string target;  // ShardOptions::dtype
  bool tie = false;
  std::string engine = "vllm";
};

// Feeds every file in random pieces (1 byte to 300 KiB, so elements are cut in two), the files
// interleaved at random; one file is fed a garbage prefix first and then started over.
TEST_F(StreamSharderTest, MatchesShardCheckpointAcrossArchitecturesAndTp) {
  const std::vector<StreamCase> cases = {
      {"llama", 4, 2, "bf16", "auto"},
      {"llama", 8, 1, "f32", "bfloat16"},
      {"qwen2", 2, 3, "bf16", "float32", true, "sglang"},
      {"qwen3", 4, 2, "f16", "bfloat16"},
      {"phi3", 2, 2, "bf16", "auto"},
      {"gemma3", 2, 1, "bf16", "float16"},
      {"mixtral", 4, 2, "bf16", "auto"},
      {"qwen2-moe", 2, 2, "f32", "float16"},
      {"qwen3-moe", 4, 3, "bf16", "auto"},
  };
  std::mt19937_64 rng(19);
  for (const StreamCase& c : cases) {
    SCOPED_TRACE(c.arch + " tp " + std::to_string(c.tp) + " " + c.dtype + " -> " + c.target);
    const std::string base = dir_ + "/" + c.arch + "-" + std::to_string(c.tp);
    fixtures::CheckpointSpec spec;
    spec.arch = c.arch;
    spec.files = c.files;
    spec.dtype = c.dtype;
    spec.tie_embeddings = c.tie;
    ASSERT_TRUE(fixtures::MakeCheckpoint(base + "/ckpt", spec));
    ShardOptions opts;
    opts.src_dir = base + "/ckpt";
    opts.tensor_parallel_size = c.tp;
    opts.engine = c.engine;
    opts.dtype = c.target;
    opts.max_file_size = 64 << 10;  // several parts per rank
    opts.fsync = false;
    opts.out_dir = base + "/after";
    ShardProgress p1;
    auto after = ShardCheckpoint(opts, p1);
    ASSERT_TRUE(after) << after.error().ToString();

    opts.out_dir = base + "/streamed";
    Source src = ReadSource(opts.src_dir);
    ShardProgress p2;
    auto sharder = Create(opts, src, p2);
    ASSERT_NE(sharder, nullptr);
    std::map<std::string, uint64_t> at;
    for (const auto& [name, bytes] : src.files) {
      EXPECT_TRUE(sharder->Wants(name));
      at[name] = 0;
    }
    EXPECT_FALSE(sharder->Wants("config.json"));
    // A garbage prefix of the first file, as a download later failing verification would give.
    const std::string& first = src.files.begin()->first;
    std::string garbage(src.files.begin()->second.size() / 2, '\x5a');
    ASSERT_TRUE(sharder->Feed(first, 0, garbage));
    while (!at.empty()) {
      auto it = at.begin();
      std::advance(it, static_cast<long>(rng() % at.size()));
      const std::string& bytes = src.files[it->first];
      uint64_t n = std::min<uint64_t>(bytes.size() - it->second, 1 + rng() % (300 << 10));
      if (rng() % 4 == 0) {
        n = std::min<uint64_t>(n, 1 + rng() % 7);
      }
      auto fed =
          sharder->Feed(it->first, it->second, std::string_view(bytes).substr(it->second, n));
      ASSERT_TRUE(fed) << fed.error().ToString();
      it->second += n;
      if (it->second == bytes.size()) {
        at.erase(it);
      }
    }
    auto streamed = sharder->Finish();
    ASSERT_TRUE(streamed) << streamed.error().ToString();
    EXPECT_EQ(sharder->bytes_read_back(), 0u);
    EXPECT_EQ(streamed->files, after->files);
    EXPECT_EQ(streamed->settings, after->settings);
    EXPECT_EQ(p2.bytes_done.load(), p2.bytes_total.load());
    ExpectSameFiles(base + "/after", base + "/streamed");
    // Every rank file hashed while it filled (one restarted after its garbage prefix).
    ExpectDigestsOfRankFiles(*streamed, base + "/streamed");
  }
}

// Files never fed (already in the store) and files fed with a gap are read from disk by Finish.
TEST_F(StreamSharderTest, FinishReadsWhatWasNotFed) {
  fixtures::CheckpointSpec spec;
  spec.arch = "qwen3";
  spec.files = 3;
  ASSERT_TRUE(fixtures::MakeCheckpoint(dir_ + "/ckpt", spec));
  ShardOptions opts;
  opts.src_dir = dir_ + "/ckpt";
  opts.tensor_parallel_size = 2;
  opts.fsync = false;
  opts.out_dir = dir_ + "/after";
  ShardProgress p1;
  ASSERT_TRUE(ShardCheckpoint(opts, p1));

  opts.out_dir = dir_ + "/streamed";
  Source src = ReadSource(opts.src_dir);
  ASSERT_EQ(src.files.size(), 3u);
  ShardProgress p2;
  auto sharder = Create(opts, src, p2);
  ASSERT_NE(sharder, nullptr);
  auto file = src.files.begin();
  // The first file whole, the second with a gap (its later bytes are ignored), the third never.
  ASSERT_TRUE(sharder->Feed(file->first, 0, file->second));
  ++file;
  const std::string& second = file->second;
  ASSERT_TRUE(sharder->Feed(file->first, 0, std::string_view(second).substr(0, 100)));
  ASSERT_TRUE(sharder->Feed(file->first, 200, std::string_view(second).substr(200)));
  ++file;
  auto streamed = sharder->Finish();
  ASSERT_TRUE(streamed) << streamed.error().ToString();
  EXPECT_EQ(sharder->bytes_read_back(), second.size() + file->second.size());
  ExpectSameFiles(dir_ + "/after", dir_ + "/streamed");
  ExpectDigestsOfRankFiles(*streamed, dir_ + "/streamed");
}

// RankFileLayouts and the write observer (what an upload of the rank files while they fill
// relies on): every byte Feed writes is inside a pending range, every pending byte is written by
// the time the file is fed, and the bytes outside the pending ranges are final from Create on.
TEST_F(StreamSharderTest, PendingRangesAreExactlyWhatFeedWrites) {
  fixtures::CheckpointSpec spec;
  spec.arch = "qwen2";
  spec.files = 2;
  ASSERT_TRUE(fixtures::MakeCheckpoint(dir_ + "/ckpt", spec));
  ShardOptions opts;
  opts.src_dir = dir_ + "/ckpt";
  opts.tensor_parallel_size = 2;
  opts.dtype = "float16";
  opts.max_file_size = 64 << 10;  // several parts per rank
  opts.fsync = false;
  opts.out_dir = dir_ + "/after";
  ShardProgress p1;
  ASSERT_TRUE(ShardCheckpoint(opts, p1));

  opts.out_dir = dir_ + "/streamed";
  Source src = ReadSource(opts.src_dir);
  ShardProgress p2;
  auto sharder = Create(opts, src, p2);
  ASSERT_NE(sharder, nullptr);
  auto layouts = sharder->RankFileLayouts();
  ASSERT_GE(layouts.size(), 4u);
  // Bytes outside the pending ranges are already those of the finished file.
  for (const auto& layout : layouts) {
    std::string created = *ReadFile(opts.out_dir + "/" + layout.path);
    std::string final_bytes = *ReadFile(dir_ + "/after/" + layout.path);
    ASSERT_EQ(created.size(), layout.size);
    ASSERT_EQ(final_bytes.size(), layout.size);
    uint64_t at = 0;
    for (const auto& [a, b] : layout.pending) {
      ASSERT_LE(at, a);
      ASSERT_LT(a, b);
      ASSERT_LE(b, layout.size);
      EXPECT_TRUE(created.substr(at, a - at) == final_bytes.substr(at, a - at)) << layout.path;
      at = b;
    }
    EXPECT_TRUE(created.substr(at) == final_bytes.substr(at)) << layout.path;
  }
  std::vector<std::map<uint64_t, uint64_t>> written(layouts.size());  // offset -> length
  sharder->SetWriteObserver([&](size_t file, uint64_t offset, uint64_t length) {
    ASSERT_LT(file, written.size());
    written[file][offset] = std::max(written[file][offset], length);
  });
  for (const auto& [name, bytes] : src.files) {
    for (size_t at = 0; at < bytes.size(); at += 100000) {
      ASSERT_TRUE(sharder->Feed(name, at, std::string_view(bytes).substr(at, 100000)));
    }
  }
  auto streamed = sharder->Finish();
  ASSERT_TRUE(streamed) << streamed.error().ToString();
  EXPECT_EQ(sharder->bytes_read_back(), 0u);
  ExpectSameFiles(dir_ + "/after", dir_ + "/streamed");
  ExpectDigestsOfRankFiles(*streamed, dir_ + "/streamed");
  for (size_t i = 0; i < layouts.size(); ++i) {
    // The union of the writes is the union of the pending ranges.
    std::vector<std::pair<uint64_t, uint64_t>> merged;
    for (const auto& [offset, length] : written[i]) {
      if (!merged.empty() && offset <= merged.back().second) {
        merged.back().second = std::max(merged.back().second, offset + length);
      } else {
        merged.emplace_back(offset, offset + length);
      }
    }
    EXPECT_EQ(merged, layouts[i].pending) << layouts[i].path;
  }
}

// Rank files of tens of MiB, so that the hasher advances while they fill (8 MiB steps): a weight
// file fed with other bytes, hashed, then fed again from offset 0 with its own bytes starts the
// hashes over, and the digests are those of the final files.
TEST_F(StreamSharderTest, DigestsFollowAFileFedAgain) {
  ASSERT_TRUE(fixtures::MakeCheckpoint(dir_ + "/ckpt", LlamaOfTensMiB(4, 2)));
  ShardOptions opts;
  opts.src_dir = dir_ + "/ckpt";
  opts.tensor_parallel_size = 2;
  opts.fsync = false;
  opts.out_dir = dir_ + "/after";
  ShardProgress p1;
  ASSERT_TRUE(ShardCheckpoint(opts, p1));

  opts.out_dir = dir_ + "/streamed";
  Source src = ReadSource(opts.src_dir);
  ShardProgress p2;
  auto sharder = Create(opts, src, p2);
  ASSERT_NE(sharder, nullptr);
  auto feed = [&](const std::string& name, const std::string& bytes) {
    for (size_t at = 0; at < bytes.size(); at += 2 << 20) {
      ASSERT_TRUE(sharder->Feed(name, at, std::string_view(bytes).substr(at, 2 << 20)));
    }
  };
  // The first file fed with other bytes, the second with its own: the hasher hashes the rank
  // files, other bytes included; then the first file is fed again with its own bytes.
  const auto& [name, bytes] = *src.files.begin();
  std::string other = bytes;
  for (size_t i = 4096; i < other.size(); i += 997) {
    other[i] = static_cast<char>(other[i] ^ 0x5a);
  }
  feed(name, other);
  feed(std::next(src.files.begin())->first, std::next(src.files.begin())->second);
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  feed(name, bytes);
  auto streamed = sharder->Finish();
  ASSERT_TRUE(streamed) << streamed.error().ToString();
  EXPECT_GT(sharder->bytes_hashed_early(), 0u);
  ExpectSameFiles(dir_ + "/after", dir_ + "/streamed");
  ExpectDigestsOfRankFiles(*streamed, dir_ + "/streamed");
}

// A rank file holds its tensors in the order their source bytes arrive, so with the weight files
// fed one after the other, front to back (as the cache job downloads them), every rank file fills
// front to back: once a file is fed, what is written of each rank file is (nearly) all in its
// complete prefix, which the hasher can hash from the page cache. Only a tensor whose sources
// straddle two weight files (one layer's gate in one file, its up in the next) waits for the next
// file. Laid out by name, `lm_head.weight` (in the last weight file) came first, and nothing was
// in the prefix before the last file arrived.
TEST_F(StreamSharderTest, RankFilesFillFrontToBackWhenTheFilesArriveInOrder) {
  // 12 layers: layers 10 and 11 sort before layer 2 by name.
  ASSERT_TRUE(fixtures::MakeCheckpoint(dir_ + "/ckpt", LlamaOfTensMiB(12, 3)));
  ShardOptions opts;
  opts.src_dir = dir_ + "/ckpt";
  opts.out_dir = dir_ + "/streamed";
  opts.tensor_parallel_size = 2;
  opts.fsync = false;
  Source src = ReadSource(opts.src_dir);
  ShardProgress progress;
  auto sharder = Create(opts, src, progress);
  ASSERT_NE(sharder, nullptr);

  // Per rank file: the ranges Feed writes that are still unwritten, and the bytes written.
  std::vector<StreamSharder::RankFileLayout> layouts = sharder->RankFileLayouts();
  std::vector<std::map<uint64_t, uint64_t>> unwritten(layouts.size());
  std::vector<uint64_t> written(layouts.size(), 0);
  for (size_t f = 0; f < layouts.size(); ++f) {
    for (const auto& [begin, end] : layouts[f].pending) {
      unwritten[f][begin] = end;
    }
  }
  sharder->SetWriteObserver([&](size_t f, uint64_t offset, uint64_t length) {
    written[f] += length;
    auto& gaps = unwritten[f];
    auto it = gaps.upper_bound(offset);
    if (it != gaps.begin()) {
      --it;
    }
    const uint64_t end = offset + length;
    while (it != gaps.end() && it->first < end) {
      auto [begin, stop] = *it;
      it = gaps.erase(it);
      if (begin < offset) {
        gaps[begin] = std::min(stop, offset);
      }
      if (stop > end) {
        gaps[end] = stop;
      }
    }
  });
  auto prefix = [&](size_t f) {  // pending bytes in the complete prefix of rank file f
    uint64_t first_gap = unwritten[f].empty() ? layouts[f].size : unwritten[f].begin()->first;
    uint64_t in_prefix = 0;
    for (const auto& [begin, end] : layouts[f].pending) {
      in_prefix += std::min(end, first_gap) - std::min(begin, first_gap);
    }
    return in_prefix;
  };
  size_t fed_files = 0;
  for (const auto& [name, bytes] : src.files) {  // in file order, 2 MiB at a time
    for (size_t at = 0; at < bytes.size(); at += 2 << 20) {
      ASSERT_TRUE(sharder->Feed(name, at, std::string_view(bytes).substr(at, 2 << 20)));
    }
    fed_files += 1;
    for (size_t f = 0; f < layouts.size(); ++f) {
      SCOPED_TRACE(layouts[f].path + " after " + name);
      EXPECT_GT(written[f], 0u);
      EXPECT_GE(prefix(f), written[f] * 9 / 10);
      if (fed_files == src.files.size()) {
        EXPECT_TRUE(unwritten[f].empty());
        EXPECT_EQ(prefix(f), written[f]);
      }
    }
  }
  auto result = sharder->Finish();
  ASSERT_TRUE(result) << result.error().ToString();
  EXPECT_EQ(sharder->bytes_read_back(), 0u);
  ExpectDigestsOfRankFiles(*result, opts.out_dir);
}

// Headers that disagree with config.json are refused before any weight byte is needed.
TEST_F(StreamSharderTest, RefusesBadHeadersAtCreate) {
  fixtures::CheckpointSpec spec;
  spec.arch = "llama";
  ASSERT_TRUE(fixtures::MakeCheckpoint(dir_ + "/ckpt", spec));
  Source src = ReadSource(dir_ + "/ckpt");
  std::map<std::string, Checkpoint::HeaderBytes> headers;
  const auto& [name, bytes] = *src.files.begin();
  // The header cut short: a header is only trusted whole.
  headers[name] = {bytes.size(), bytes.substr(0, 20)};
  auto ckpt = Checkpoint::FromHeaders(dir_ + "/ckpt", src.index, headers);
  ASSERT_FALSE(ckpt);
  EXPECT_EQ(ckpt.error().reason, Reason::ShardConfigInvalid);
  EXPECT_NE(ckpt.error().message.find("header"), std::string::npos) << ckpt.error().message;

  // A config.json with another hidden size than the weights.
  auto config = nlohmann::json::parse(src.config);
  config["intermediate_size"] = config["intermediate_size"].get<int64_t>() * 2;
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) {
    n = (n << 8) | static_cast<unsigned char>(bytes[static_cast<size_t>(i)]);
  }
  headers[name] = {bytes.size(), bytes.substr(0, 8 + n)};
  auto good = Checkpoint::FromHeaders(dir_ + "/ckpt", src.index, headers);
  ASSERT_TRUE(good) << good.error().ToString();
  ShardOptions opts;
  opts.src_dir = dir_ + "/ckpt";
  opts.out_dir = dir_ + "/out";
  ShardProgress progress;
  auto sharder = StreamSharder::Create(opts, config.dump(), std::move(*good), progress);
  ASSERT_FALSE(sharder);
  EXPECT_EQ(sharder.error().reason, Reason::ShardConfigInvalid);
  EXPECT_NE(sharder.error().message.find("config.json implies"), std::string::npos)
      << sharder.error().message;
}

}  // namespace
}  // namespace modelcache::shard
