#include "shard/sharder.h"

#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "common/files.h"
#include "shard/dtype.h"
#include "shard/safetensors.h"
#include "tests/fixtures/checkpoint/checkpoint_gen.h"

namespace modelcache::shard {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::string Bytes(const SafetensorsFile& f, const TensorInfo& t) {
  return std::string(reinterpret_cast<const char*>(f.data(t)), t.size());
}

// Rows [row0, row0 + rows) of a row-major tensor whose rows are `row_bytes` long.
std::string Rows(const std::string& bytes, int64_t row0, int64_t rows, int64_t row_bytes) {
  return bytes.substr(static_cast<size_t>(row0 * row_bytes), static_cast<size_t>(rows * row_bytes));
}

// The tensors of one rank, across all its parts.
struct Rank {
  std::vector<std::unique_ptr<SafetensorsFile>> files;
  std::map<std::string, std::string> tensors;  // name -> bytes
  std::map<std::string, std::vector<int64_t>> shapes;
};

Rank ReadRank(const std::string& dir, int64_t r) {
  Rank rank;
  std::string prefix = "model-rank-" + std::to_string(r) + "-part-";
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) {
    std::string name = e.path().filename().string();
    if (name.rfind(prefix, 0) == 0) {
      names.push_back(name);
    }
  }
  std::sort(names.begin(), names.end());
  for (const auto& name : names) {
    auto f = SafetensorsFile::Open(dir + "/" + name);
    EXPECT_TRUE(f) << f.error().ToString();
    if (!f) continue;
    for (const auto& t : (*f)->tensors()) {
      EXPECT_EQ(rank.tensors.count(t.name), 0u) << t.name << " in two parts";
      rank.tensors[t.name] = Bytes(**f, t);
      rank.shapes[t.name] = t.shape;
    }
    rank.files.push_back(std::move(*f));
  }
  return rank;
}

// The state-dict key vLLM >= 0.14 saves a checkpoint tensor's rows under, with the MoE aliases
// the loaders' de-duplication picks (the smallest name of a storage).
std::string OutKey(const std::string& arch, std::string name, bool tie) {
  auto replace = [&](const std::string& from, const std::string& to) {
    auto at = name.find(from);
    if (at != std::string::npos) name.replace(at, from.size(), to);
  };
  if (name == "model.embed_tokens.weight") {
    return tie && arch.rfind("Gemma", 0) != 0 ? "lm_head.weight" : name;
  }
  replace(".q_proj.", ".qkv_proj.");
  replace(".k_proj.", ".qkv_proj.");
  replace(".v_proj.", ".qkv_proj.");
  if (name.find(".experts.") != std::string::npos) {
    auto at = name.find(".experts.") + 9;
    auto dot = name.find('.', at);
    std::string leaf = name.substr(dot + 1);
    name = name.substr(0, at) +
           (leaf == "down_proj.weight" || leaf == "w2.weight" ? "w2_weight" : "w13_weight");
    return name;
  }
  replace("shared_expert_gate.weight", "experts._shared_experts.expert_gate.weight");
  replace("shared_expert.", "experts._shared_experts.");
  replace(".gate_proj.", ".gate_up_proj.");
  replace(".up_proj.", ".gate_up_proj.");
  if (arch == "Qwen3MoeForCausalLM") replace("mlp.gate.weight", "mlp.experts._gate.weight");
  return name;
}

// Re-assembles every checkpoint tensor of any supported architecture from the ranks, from the
// engine's partitioning rules written out here independently of the plan, and checks that the
// ranks hold nothing else (besides the attention scale buffers).
void ExpectEveryTensorReassembles(const std::string& src_dir, const std::string& out_dir,
                                  const json& config, int64_t tp) {
  auto ckpt_or = Checkpoint::Open(src_dir);
  ASSERT_TRUE(ckpt_or);
  const Checkpoint& ckpt = **ckpt_or;
  const std::string arch = config["architectures"][0];
  const int64_t H = config["hidden_size"];
  const int64_t heads = config["num_attention_heads"];
  const int64_t kv = config["num_key_value_heads"];
  const int64_t D = config.contains("head_dim") ? config["head_dim"].get<int64_t>() : H / heads;
  const int64_t V = config["vocab_size"];
  const bool tie = config["tie_word_embeddings"];
  const int64_t es = 2;
  const int64_t q_rows = heads / tp * D;
  const int64_t kv_rows = std::max<int64_t>(1, kv / tp) * D;
  const int64_t replicas = tp >= kv ? tp / kv : 1;
  const int64_t padded = (V + 63) / 64 * 64;
  std::vector<Rank> ranks;
  for (int64_t r = 0; r < tp; ++r) ranks.push_back(ReadRank(out_dir, r));
  std::set<std::string> used;
  auto rank_tensor = [&](int64_t r, const std::string& key) -> const std::string& {
    used.insert(key);
    auto& t = ranks[static_cast<size_t>(r)].tensors;
    EXPECT_EQ(t.count(key), 1u) << key << " missing on rank " << r;
    return t[key];
  };
  // Rows [offset, offset + n) of each rank's tensor, concatenated (taking only the first rank of
  // each group of `group` ranks holding the same rows).
  auto gather = [&](const std::string& key, int64_t offset, int64_t n, int64_t row_bytes,
                    int64_t group = 1) {
    std::string all;
    for (int64_t r = 0; r < tp; r += group) all += Rows(rank_tensor(r, key), offset, n, row_bytes);
    return all;
  };
  auto columns = [&](const std::string& key, int64_t block_row0, int64_t rows, int64_t width) {
    std::string all;  // the columns of rows [block_row0, +rows) of each rank, side by side
    for (int64_t row = 0; row < rows; ++row) {
      for (int64_t r = 0; r < tp; ++r) {
        all += Rows(rank_tensor(r, key), block_row0 + row, 1, width * es);
      }
    }
    return all;
  };
  for (const auto& name : ckpt.names()) {
    SCOPED_TRACE(name);
    const auto* e = ckpt.Find(name);
    const std::string original = Bytes(*e->file, *e->info);
    const auto& shape = e->info->shape;
    const int64_t width = shape.size() >= 2 ? shape[1] : 1;
    const int64_t rb = width * es;
    const std::string key = OutKey(arch, name, tie);
    auto ends = [&](const std::string& s) {
      return name.size() >= s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0;
    };
    std::string got;
    if (name == "lm_head.weight" || name == "model.embed_tokens.weight") {
      got = gather(key, 0, padded / tp, rb);
      EXPECT_EQ(got.substr(static_cast<size_t>(V * rb)),
                std::string(static_cast<size_t>((padded - V) * rb), '\0'));
      got.resize(static_cast<size_t>(V * rb));
    } else if (name.find("self_attn.q_proj.") != std::string::npos) {
      got = gather(key, 0, q_rows, rb);
    } else if (name.find("self_attn.k_proj.") != std::string::npos) {
      got = gather(key, q_rows, kv_rows, rb, replicas);
    } else if (name.find("self_attn.v_proj.") != std::string::npos) {
      got = gather(key, q_rows + kv_rows, kv_rows, rb, replicas);
    } else if (ends("self_attn.qkv_proj.weight")) {  // Phi-3: q | k | v in one tensor
      got = gather(key, 0, q_rows, rb) + gather(key, q_rows, kv_rows, rb, replicas) +
            gather(key, q_rows + kv_rows, kv_rows, rb, replicas);
    } else if (ends("o_proj.weight") ||
               (ends("down_proj.weight") && name.find(".experts.") == std::string::npos) ||
               ends("mlp.down_proj.weight")) {
      got = columns(key, 0, shape[0], shape[1] / tp);
    } else if (name.find(".experts.") != std::string::npos) {
      // experts.E.{gate_proj|w1, up_proj|w3, down_proj|w2}: w13 [E, 2n, H], w2 [E, H, n].
      auto at = name.find(".experts.") + 9;
      const int64_t expert = std::stoll(name.substr(at));
      const std::string leaf = name.substr(name.find('.', at) + 1);
      if (leaf == "down_proj.weight" || leaf == "w2.weight") {
        const int64_t n = shape[1] / tp;
        EXPECT_EQ(ranks[0].shapes[key][2], n);
        got = columns(key, expert * shape[0], shape[0], n);
      } else {
        const int64_t n = shape[0] / tp;
        const bool up = leaf == "up_proj.weight" || leaf == "w3.weight";
        EXPECT_EQ(ranks[0].shapes[key], (std::vector<int64_t>{ranks[0].shapes[key][0], 2 * n, H}));
        got = gather(key, expert * 2 * n + (up ? n : 0), n, rb);
      }
    } else if (ends("gate_up_proj.weight")) {  // Phi-3: gate | up in one tensor
      const int64_t n = shape[0] / 2 / tp;
      got = gather(key, 0, n, rb) + gather(key, n, n, rb);
    } else if (ends("gate_proj.weight") || ends("up_proj.weight")) {
      const int64_t n = shape[0] / tp;
      got = gather(key, ends("up_proj.weight") ? n : 0, n, rb);
    } else {  // replicated: norms, routers, the shared expert's gate
      for (int64_t r = 0; r < tp; ++r) {
        EXPECT_EQ(rank_tensor(r, key), original) << "rank " << r;
      }
      got = original;
    }
    EXPECT_EQ(got, original);
  }
  for (const auto& rank : ranks) {
    for (const auto& [key, bytes] : rank.tensors) {
      if (key.find("self_attn.attn._") != std::string::npos) {
        continue;
      }
      EXPECT_EQ(used.count(key), 1u) << key << " comes from no checkpoint tensor";
    }
  }
}

struct Case {
  std::string arch;
  int64_t tp;
  bool tie;
  int files;
  std::string engine;
};

class SharderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::testing::TempDir() + "/sharder-" + UniqueSuffix();
    ASSERT_TRUE(MakeDirs(dir_));
  }
  void TearDown() override { fs::remove_all(dir_); }

  json Make(const std::string& name, fixtures::CheckpointSpec spec) {
    auto config = fixtures::MakeCheckpoint(dir_ + "/" + name, spec);
    EXPECT_TRUE(config) << config.error().ToString();
    return config ? *config : json();
  }

  Result<ShardResult> Shard(const std::string& src, const std::string& out, int64_t tp,
                            const std::string& engine = "vllm", const std::string& dtype = "auto",
                            uint64_t max_file_size = 5ULL << 30, int threads = 2) {
    ShardOptions o;
    o.src_dir = dir_ + "/" + src;
    o.out_dir = dir_ + "/" + out;
    o.tensor_parallel_size = tp;
    o.engine = engine;
    o.dtype = dtype;
    o.max_file_size = max_file_size;
    o.threads = threads;
    o.fsync = false;
    ShardProgress progress;
    auto r = ShardCheckpoint(o, progress);
    if (r) {
      EXPECT_GT(progress.bytes_total.load(), 0u);
      EXPECT_EQ(progress.bytes_done.load(), progress.bytes_total.load());
    }
    return r;
  }

  // Re-assembles every original tensor from the ranks (ExpectEveryTensorReassembles) and checks
  // the attention scale buffers: float32 scalars holding 1.0 in every layer, or none at all.
  void ExpectReassembles(const std::string& src, const std::string& out, const json& config,
                         int64_t tp, bool scale_buffers) {
    ExpectEveryTensorReassembles(dir_ + "/" + src, dir_ + "/" + out, config, tp);
    const int64_t layers = config["num_hidden_layers"];
    const float one = 1.0f;
    for (int64_t r = 0; r < tp; ++r) {
      Rank rank = ReadRank(dir_ + "/" + out, r);
      size_t buffers = 0;
      for (const auto& [key, bytes] : rank.tensors) {
        if (key.find("self_attn.attn._") != std::string::npos) {
          ++buffers;
          EXPECT_EQ(bytes, std::string(reinterpret_cast<const char*>(&one), 4)) << key;
          EXPECT_TRUE(rank.shapes[key].empty()) << key;
        }
      }
      EXPECT_EQ(buffers, scale_buffers ? static_cast<size_t>(4 * layers) : 0u) << "rank " << r;
    }
  }

  std::string dir_;
};

TEST_F(SharderTest, ReassemblesOriginalsForEveryArchitectureAndTp) {
  const std::vector<Case> cases = {
      {"qwen3", 1, false, 1, "vllm"},   {"qwen3", 2, false, 1, "vllm"},
      {"qwen3", 4, false, 2, "vllm"},   {"qwen3", 8, true, 1, "vllm"},
      {"llama", 8, true, 3, "vllm"},    {"llama3", 4, false, 1, "sglang"},
      {"qwen2", 4, false, 2, "sglang"}, {"qwen2.5", 2, true, 1, "vllm"},
      {"mistral", 2, false, 2, "vllm"},
  };
  int n = 0;
  for (const auto& c : cases) {
    SCOPED_TRACE(c.arch + " tp " + std::to_string(c.tp) + " " + c.engine);
    fixtures::CheckpointSpec spec;
    spec.arch = c.arch;
    spec.tie_embeddings = c.tie;
    spec.files = c.files;
    spec.seed = static_cast<uint64_t>(n);
    const std::string src = "src" + std::to_string(n);
    const std::string out = "out" + std::to_string(n);
    ++n;
    json config = Make(src, spec);
    auto r = Shard(src, out, c.tp, c.engine);
    ASSERT_TRUE(r) << r.error().ToString();
    EXPECT_EQ(r->settings["tensorParallelSize"], c.tp);
    EXPECT_EQ(r->settings["engine"], c.engine);
    ExpectReassembles(src, out, config, c.tp, c.engine == "vllm");
  }
}

TEST_F(SharderTest, ReassemblesNewArchitecturesAtEveryValidTp) {
  const std::vector<std::pair<std::string, std::vector<int64_t>>> cases = {
      {"phi3", {1, 2, 4, 8}},   {"phi4-mini", {1, 4, 8}},    {"gemma", {1, 2, 4}},
      {"gemma2", {1, 2, 4, 8}}, {"gemma3", {1, 4}},          {"mixtral", {1, 2, 4}},
      {"qwen2-moe", {1, 2, 4}}, {"qwen3-moe", {1, 2, 4, 8}},
  };
  int n = 0;
  for (const auto& [arch, tps] : cases) {
    fixtures::CheckpointSpec spec;
    spec.arch = arch;
    spec.tie_embeddings = arch == "phi4-mini";
    spec.files = arch.find("moe") != std::string::npos ? 2 : 1;
    const std::string src = "src-" + arch;
    json config = Make(src, spec);
    for (int64_t tp : tps) {
      SCOPED_TRACE(arch + " tp " + std::to_string(tp));
      const std::string out = "out" + std::to_string(n++);
      auto r = Shard(src, out, tp);
      ASSERT_TRUE(r) << r.error().ToString();
      EXPECT_EQ(r->settings["architecture"], config["architectures"][0]);
      ExpectEveryTensorReassembles(dir_ + "/" + src, dir_ + "/" + out, config, tp);
    }
  }
}

// Same inputs, same bytes: whatever the thread count (Qwen3), and on a second run (Qwen3-MoE,
// several parts per rank).
TEST_F(SharderTest, OutputIsByteIdenticalWhateverTheThreads) {
  for (const auto& [arch, threads] :
       std::vector<std::pair<std::string, int>>{{"qwen3", 1}, {"qwen3-moe", 2}}) {
    SCOPED_TRACE(arch);
    fixtures::CheckpointSpec spec;
    spec.arch = arch;
    spec.files = 2;
    const std::string src = "src-" + arch;
    Make(src, spec);
    auto one = Shard(src, "one-" + arch, 4, "vllm", "auto", 30000, threads);
    auto two = Shard(src, "two-" + arch, 4, "vllm", "auto", 30000, 2);
    ASSERT_TRUE(one && two);
    ASSERT_EQ(one->files, two->files);
    EXPECT_GT(one->settings["partsPerRank"][0].get<int64_t>(), 1);
    for (const auto& f : one->files) {
      EXPECT_EQ(*ReadFile(dir_ + "/one-" + arch + "/" + f),
                *ReadFile(dir_ + "/two-" + arch + "/" + f))
          << f;
    }
    EXPECT_EQ(one->settings, two->settings);
  }
}

TEST_F(SharderTest, CopiesNonWeightFilesAndListsEverything) {
  fixtures::CheckpointSpec spec;
  spec.arch = "llama";
  spec.files = 2;
  Make("src", spec);
  ASSERT_TRUE(WriteFileAtomic(dir_ + "/src/README.md", "# readme"));
  ASSERT_TRUE(WriteFileAtomic(dir_ + "/src/merges.txt", "a b"));
  ASSERT_TRUE(MakeDirs(dir_ + "/out"));
  ASSERT_TRUE(WriteFileAtomic(dir_ + "/out/model-rank-7-part-0.safetensors", "stale"));
  auto r = Shard("src", "out", 2);
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(r->files, (std::vector<std::string>{
                          "config.json", "generation_config.json", "merges.txt",
                          "model-rank-0-part-0.safetensors", "model-rank-1-part-0.safetensors",
                          "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"}));
  EXPECT_FALSE(fs::exists(dir_ + "/out/model-rank-7-part-0.safetensors"));
  EXPECT_FALSE(fs::exists(dir_ + "/out/model.safetensors.index.json"));
  EXPECT_EQ(*ReadFile(dir_ + "/out/config.json"), *ReadFile(dir_ + "/src/config.json"));
  EXPECT_EQ(*ReadFile(dir_ + "/out/tokenizer.json"), *ReadFile(dir_ + "/src/tokenizer.json"));
  EXPECT_TRUE(IsNonWeightFile("tokenizer.model"));
  EXPECT_TRUE(IsNonWeightFile("chat_template.jinja"));
  EXPECT_FALSE(IsNonWeightFile("pytorch_model.bin"));
  EXPECT_FALSE(IsNonWeightFile("consolidated.pth"));
  EXPECT_FALSE(IsNonWeightFile(".gitattributes"));
  EXPECT_FALSE(IsNonWeightFile("modelcache.json"));
}

TEST_F(SharderTest, SplitsPartsByMaxFileSizeLikeSaveModel) {
  fixtures::CheckpointSpec spec;
  spec.arch = "qwen3";
  json config = Make("src", spec);
  const uint64_t max = 30000;
  auto r = Shard("src", "out", 2, "vllm", "auto", max);
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_GT(r->settings["partsPerRank"][0].get<int64_t>(), 3);
  for (const auto& f : r->files) {
    if (f.rfind("model-rank-", 0) != 0) continue;
    auto file = SafetensorsFile::Open(dir_ + "/out/" + f);
    ASSERT_TRUE(file);
    uint64_t bytes = 0;
    for (const auto& t : (*file)->tensors()) bytes += t.size();
    // Only a tensor that is alone in its part may exceed the limit.
    EXPECT_TRUE(bytes <= max || (*file)->tensors().size() == 1) << f << " " << bytes;
  }
  ExpectReassembles("src", "out", config, 2, true);
}

TEST_F(SharderTest, ConvertsDtypeAndSaysSoInConfig) {
  fixtures::CheckpointSpec spec;
  spec.arch = "qwen2";
  spec.dtype = "f32";
  Make("src", spec);
  auto r = Shard("src", "out", 2, "vllm", "bfloat16");
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(r->settings["dtype"], "bfloat16");
  auto ckpt = Checkpoint::Open(dir_ + "/src");
  ASSERT_TRUE(ckpt);
  Rank rank1 = ReadRank(dir_ + "/out", 1);
  // The norm is replicated: every element is the RNE bf16 of the f32 original.
  const auto* e = (*ckpt)->Find("model.norm.weight");
  std::string src = Bytes(*e->file, *e->info);
  const std::string& got = rank1.tensors["model.norm.weight"];
  ASSERT_EQ(got.size(), src.size() / 2);
  for (size_t i = 0; i < got.size() / 2; ++i) {
    float f;
    uint16_t b;
    std::memcpy(&f, src.data() + i * 4, 4);
    std::memcpy(&b, got.data() + i * 2, 2);
    ASSERT_EQ(b, FloatToBFloat16(f)) << i;
  }
  // A row-parallel slice goes through the same conversion.
  const auto* o = (*ckpt)->Find("model.layers.1.self_attn.o_proj.weight");
  std::string o_src = Bytes(*o->file, *o->info);
  const std::string& o_got = rank1.tensors["model.layers.1.self_attn.o_proj.weight"];
  float first;
  std::memcpy(&first, o_src.data() + 32 * 4, 4);  // row 0, column 32 (rank 1's first)
  uint16_t first_got;
  std::memcpy(&first_got, o_got.data(), 2);
  EXPECT_EQ(first_got, FloatToBFloat16(first));
  json config = json::parse(*ReadFile(dir_ + "/out/config.json"));
  EXPECT_EQ(config["torch_dtype"], "bfloat16");
  // The scale buffers stay float32.
  auto scale = rank1.shapes.find("model.layers.0.self_attn.attn._k_scale");
  ASSERT_NE(scale, rank1.shapes.end());
  EXPECT_EQ(rank1.tensors["model.layers.0.self_attn.attn._k_scale"].size(), 4u);
}

TEST_F(SharderTest, RejectsWhatTheEnginesWouldReject) {
  fixtures::CheckpointSpec spec;
  spec.arch = "llama";
  json config = Make("src", spec);

  auto tp3 = Shard("src", "out", 3);
  ASSERT_FALSE(tp3);
  EXPECT_EQ(tp3.error().reason, Reason::ShardConfigInvalid);

  auto engine = Shard("src", "out", 2, "tgi");
  ASSERT_FALSE(engine);
  EXPECT_EQ(engine.error().reason, Reason::InvalidSpec);
  auto in_place = Shard("src", "src", 2);
  ASSERT_FALSE(in_place);
  EXPECT_EQ(in_place.error().reason, Reason::InvalidSpec);
  auto dtype = Shard("src", "out", 2, "vllm", "fp8");
  ASSERT_FALSE(dtype);
  EXPECT_EQ(dtype.error().reason, Reason::InvalidSpec);

  json gpt2 = config;
  gpt2["architectures"] = {"GPT2LMHeadModel"};
  ASSERT_TRUE(WriteFileAtomic(dir_ + "/src/config.json", gpt2.dump()));
  auto arch = Shard("src", "out", 2);
  ASSERT_FALSE(arch);
  EXPECT_EQ(arch.error().reason, Reason::UnsupportedArchitecture);
  EXPECT_NE(arch.error().message.find("GPT2LMHeadModel"), std::string::npos);
  EXPECT_NE(arch.error().message.find(dir_ + "/src/config.json"), std::string::npos)
      << "names the file: " << arch.error().message;

  // config.json says three layers, the weights have two.
  json deeper = config;
  deeper["num_hidden_layers"] = 3;
  ASSERT_TRUE(WriteFileAtomic(dir_ + "/src/config.json", deeper.dump()));
  auto missing = Shard("src", "out", 2);
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().reason, Reason::ShardConfigInvalid);
  EXPECT_NE(missing.error().message.find("model.layers.2."), std::string::npos);
  EXPECT_NE(missing.error().message.find(dir_ + "/src"), std::string::npos)
      << "names the checkpoint: " << missing.error().message;

  // config.json says one layer: layer 1's weights have no place.
  json shallower = config;
  shallower["num_hidden_layers"] = 1;
  ASSERT_TRUE(WriteFileAtomic(dir_ + "/src/config.json", shallower.dump()));
  auto extra = Shard("src", "out", 2);
  ASSERT_FALSE(extra);
  EXPECT_NE(extra.error().message.find("model.layers.1."), std::string::npos);
  EXPECT_NE(extra.error().message.find("model.safetensors"), std::string::npos)
      << "names the file: " << extra.error().message;

  // Wrong shapes: a different hidden size.
  json wider = config;
  wider["intermediate_size"] = 320;
  ASSERT_TRUE(WriteFileAtomic(dir_ + "/src/config.json", wider.dump()));
  auto shape = Shard("src", "out", 2);
  ASSERT_FALSE(shape);
  EXPECT_NE(shape.error().message.find("shape"), std::string::npos);

  // A truncated weights file is named.
  ASSERT_TRUE(WriteFileAtomic(dir_ + "/src/config.json", config.dump()));
  fs::resize_file(dir_ + "/src/model.safetensors",
                  fs::file_size(dir_ + "/src/model.safetensors") - 3);
  auto truncated = Shard("src", "out", 2);
  ASSERT_FALSE(truncated);
  EXPECT_EQ(truncated.error().reason, Reason::ShardConfigInvalid);
  EXPECT_NE(truncated.error().message.find("model.safetensors"), std::string::npos);
}

TEST_F(SharderTest, StopsWhenCancelled) {
  fixtures::CheckpointSpec spec;
  spec.arch = "qwen3";
  Make("src", spec);
  ShardOptions o;
  o.src_dir = dir_ + "/src";
  o.out_dir = dir_ + "/out";
  o.tensor_parallel_size = 2;
  o.fsync = false;
  std::stop_source stop;
  stop.request_stop();
  ShardProgress progress;
  auto r = ShardCheckpoint(o, progress, stop.get_token());
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().reason, Reason::Cancelled);
}

}  // namespace
}  // namespace modelcache::shard
