#include "shard/shard_plan.h"

#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace modelcache::shard {
namespace {

using nlohmann::json;

json TinyConfig(const std::string& arch, int64_t layers = 1) {
  json c = {{"architectures", {arch}},     {"hidden_size", 64},        {"intermediate_size", 160},
            {"num_hidden_layers", layers}, {"num_attention_heads", 8}, {"num_key_value_heads", 2},
            {"vocab_size", 1000},          {"torch_dtype", "bfloat16"}};
  if (arch == "Qwen3ForCausalLM") {
    c["head_dim"] = 16;
  }
  return c;
}

ShardPlan Plan(const json& config, int64_t tp, const std::string& engine = "vllm",
               const std::string& release = "") {
  auto spec = ParseModelSpec(config);
  EXPECT_TRUE(spec) << spec.error().ToString();
  auto layout = ResolveEngineLayout(engine, release);
  EXPECT_TRUE(layout) << layout.error().ToString();
  auto plan = MakeShardPlan(*spec, *layout, tp);
  EXPECT_TRUE(plan) << plan.error().ToString();
  return *plan;
}

std::string Describe(const std::vector<RankTensor>& tensors) {
  std::string out;
  for (const auto& t : tensors) {
    out += t.name + " [";
    for (size_t i = 0; i < t.shape.size(); ++i) {
      out += (i ? "," : "") + std::to_string(t.shape[i]);
    }
    out += "]\n";
  }
  return out;
}

// Golden state dicts of vLLM >= 0.14 Qwen3ForCausalLM, one layer, per rank (all ranks have the
// same keys and shapes): hidden 64, 8 heads of 16, 2 KV heads, intermediate 160, vocab 1000 ->
// 1024.
TEST(ShardPlanTest, GoldenQwen3NamesAndShapesPerTp) {
  const std::vector<std::pair<int64_t, std::string>> golden = {
      {1,
       "model.embed_tokens.weight [1024,64]\n"
       "model.layers.0.self_attn.qkv_proj.weight [192,64]\n"
       "model.layers.0.self_attn.o_proj.weight [64,128]\n"
       "model.layers.0.self_attn.attn._k_scale []\n"
       "model.layers.0.self_attn.attn._v_scale []\n"
       "model.layers.0.self_attn.attn._q_scale []\n"
       "model.layers.0.self_attn.attn._prob_scale []\n"
       "model.layers.0.self_attn.q_norm.weight [16]\n"
       "model.layers.0.self_attn.k_norm.weight [16]\n"
       "model.layers.0.mlp.gate_up_proj.weight [320,64]\n"
       "model.layers.0.mlp.down_proj.weight [64,160]\n"
       "model.layers.0.input_layernorm.weight [64]\n"
       "model.layers.0.post_attention_layernorm.weight [64]\n"
       "model.norm.weight [64]\n"
       "lm_head.weight [1024,64]\n"},
      {2,
       "model.embed_tokens.weight [512,64]\n"
       "model.layers.0.self_attn.qkv_proj.weight [96,64]\n"
       "model.layers.0.self_attn.o_proj.weight [64,64]\n"
       "model.layers.0.self_attn.attn._k_scale []\n"
       "model.layers.0.self_attn.attn._v_scale []\n"
       "model.layers.0.self_attn.attn._q_scale []\n"
       "model.layers.0.self_attn.attn._prob_scale []\n"
       "model.layers.0.self_attn.q_norm.weight [16]\n"
       "model.layers.0.self_attn.k_norm.weight [16]\n"
       "model.layers.0.mlp.gate_up_proj.weight [160,64]\n"
       "model.layers.0.mlp.down_proj.weight [64,80]\n"
       "model.layers.0.input_layernorm.weight [64]\n"
       "model.layers.0.post_attention_layernorm.weight [64]\n"
       "model.norm.weight [64]\n"
       "lm_head.weight [512,64]\n"},
      {4,
       "model.embed_tokens.weight [256,64]\n"
       "model.layers.0.self_attn.qkv_proj.weight [64,64]\n"
       "model.layers.0.self_attn.o_proj.weight [64,32]\n"
       "model.layers.0.self_attn.attn._k_scale []\n"
       "model.layers.0.self_attn.attn._v_scale []\n"
       "model.layers.0.self_attn.attn._q_scale []\n"
       "model.layers.0.self_attn.attn._prob_scale []\n"
       "model.layers.0.self_attn.q_norm.weight [16]\n"
       "model.layers.0.self_attn.k_norm.weight [16]\n"
       "model.layers.0.mlp.gate_up_proj.weight [80,64]\n"
       "model.layers.0.mlp.down_proj.weight [64,40]\n"
       "model.layers.0.input_layernorm.weight [64]\n"
       "model.layers.0.post_attention_layernorm.weight [64]\n"
       "model.norm.weight [64]\n"
       "lm_head.weight [256,64]\n"},
      {8,
       "model.embed_tokens.weight [128,64]\n"
       "model.layers.0.self_attn.qkv_proj.weight [48,64]\n"
       "model.layers.0.self_attn.o_proj.weight [64,16]\n"
       "model.layers.0.self_attn.attn._k_scale []\n"
       "model.layers.0.self_attn.attn._v_scale []\n"
       "model.layers.0.self_attn.attn._q_scale []\n"
       "model.layers.0.self_attn.attn._prob_scale []\n"
       "model.layers.0.self_attn.q_norm.weight [16]\n"
       "model.layers.0.self_attn.k_norm.weight [16]\n"
       "model.layers.0.mlp.gate_up_proj.weight [40,64]\n"
       "model.layers.0.mlp.down_proj.weight [64,20]\n"
       "model.layers.0.input_layernorm.weight [64]\n"
       "model.layers.0.post_attention_layernorm.weight [64]\n"
       "model.norm.weight [64]\n"
       "lm_head.weight [128,64]\n"},
  };
  for (const auto& [tp, expected] : golden) {
    ShardPlan plan = Plan(TinyConfig("Qwen3ForCausalLM"), tp);
    ASSERT_EQ(plan.ranks.size(), static_cast<size_t>(tp));
    for (int64_t r = 0; r < tp; ++r) {
      EXPECT_EQ(Describe(plan.ranks[static_cast<size_t>(r)]), expected)
          << "tp " << tp << " rank " << r;
    }
  }
}

// Qwen2 (qkv bias, no qk norm), SGLang (no attention scale buffers), tied embeddings (saved once,
// as lm_head.weight, where the embedding is).
TEST(ShardPlanTest, GoldenQwen2TiedOnSglang) {
  json config = TinyConfig("Qwen2ForCausalLM");
  config["tie_word_embeddings"] = true;
  ShardPlan plan = Plan(config, 2, "sglang");
  EXPECT_EQ(Describe(plan.ranks[1]),
            "lm_head.weight [512,64]\n"
            "model.layers.0.self_attn.qkv_proj.weight [48,64]\n"
            "model.layers.0.self_attn.qkv_proj.bias [48]\n"
            "model.layers.0.self_attn.o_proj.weight [64,32]\n"
            "model.layers.0.mlp.gate_up_proj.weight [160,64]\n"
            "model.layers.0.mlp.down_proj.weight [64,80]\n"
            "model.layers.0.input_layernorm.weight [64]\n"
            "model.layers.0.post_attention_layernorm.weight [64]\n"
            "model.norm.weight [64]\n");
  EXPECT_EQ(plan.sources.count("lm_head.weight"), 0u);
  EXPECT_TRUE(plan.Ignorable("lm_head.weight"));
  EXPECT_TRUE(plan.Ignorable("model.layers.0.self_attn.rotary_emb.inv_freq"));
  EXPECT_FALSE(plan.Ignorable("model.layers.0.self_attn.q_proj.weight"));
}

TEST(ShardPlanTest, LlamaAttentionBiasAppliesToQkvAndOProj) {
  json config = TinyConfig("LlamaForCausalLM");
  config["attention_bias"] = true;
  ShardPlan plan = Plan(config, 4, "vllm", "0.13.0");
  std::string d = Describe(plan.ranks[0]);
  EXPECT_NE(d.find("self_attn.qkv_proj.bias [32]\n"), std::string::npos) << d;
  EXPECT_NE(d.find("self_attn.o_proj.bias [64]\n"), std::string::npos) << d;
  EXPECT_EQ(d.find("_k_scale"), std::string::npos) << d;  // vllm 0.13 had no scale buffers
  // vllm's Llama lets a qkv_bias field override attention_bias for qkv_proj only.
  config["qkv_bias"] = false;
  std::string no_qkv = Describe(Plan(config, 4).ranks[0]);
  EXPECT_EQ(no_qkv.find("qkv_proj.bias"), std::string::npos) << no_qkv;
  EXPECT_NE(no_qkv.find("self_attn.o_proj.bias [64]\n"), std::string::npos) << no_qkv;
  // Mistral is Llama-shaped.
  ShardPlan mistral = Plan(TinyConfig("MistralForCausalLM"), 2);
  EXPECT_EQ(mistral.ranks[0].size(), 15u - 2u);  // Qwen3's list without q_norm/k_norm
}

TEST(ShardPlanTest, KvHeadsAreReplicatedWhenTpExceedsThem) {
  ShardPlan plan = Plan(TinyConfig("LlamaForCausalLM"), 8);  // 2 KV heads, head_dim 8
  for (int64_t r = 0; r < 8; ++r) {
    const RankTensor& qkv = plan.ranks[static_cast<size_t>(r)][1];
    ASSERT_EQ(qkv.name, "model.layers.0.self_attn.qkv_proj.weight");
    ASSERT_EQ(qkv.pieces.size(), 3u);
    EXPECT_EQ(qkv.pieces[0].source, "model.layers.0.self_attn.q_proj.weight");
    EXPECT_EQ(qkv.pieces[0].src_row, r * 8);  // one q head of 8 rows
    EXPECT_EQ(qkv.pieces[1].source, "model.layers.0.self_attn.k_proj.weight");
    EXPECT_EQ(qkv.pieces[1].src_row, (r / 4) * 8);  // 4 ranks share each KV head
    EXPECT_EQ(qkv.pieces[2].src_row, (r / 4) * 8);
    EXPECT_EQ(qkv.pieces[1].rows, 8);
  }
  // tp 2 < 2 KV heads? equal: each rank one head, no replication.
  ShardPlan two = Plan(TinyConfig("LlamaForCausalLM"), 2);
  EXPECT_EQ(two.ranks[1][1].pieces[1].src_row, 8);
}

TEST(ShardPlanTest, VocabIsPaddedTo64AndLaidOutPerRank) {
  ShardPlan plan = Plan(TinyConfig("LlamaForCausalLM"), 8);
  EXPECT_EQ(plan.padded_vocab, 1024);
  // Rank 7 holds rows 896..999 then 24 zero rows; rank 0 holds 0..127.
  const RankTensor& last = plan.ranks[7].front();
  ASSERT_EQ(last.pieces.size(), 2u);
  EXPECT_EQ(last.pieces[0].src_row, 896);
  EXPECT_EQ(last.pieces[0].rows, 104);
  EXPECT_EQ(last.pieces[1].kind, Piece::Kind::Zeros);
  EXPECT_EQ(last.pieces[1].rows, 24);
  const RankTensor& first = plan.ranks[0].front();
  ASSERT_EQ(first.pieces.size(), 1u);
  EXPECT_EQ(first.pieces[0].rows, 128);
  // A vocabulary so small that a whole rank is padding.
  json tiny = TinyConfig("LlamaForCausalLM");
  tiny["vocab_size"] = 100;  // padded to 128: rank 7 of tp 8 holds rows 112..127, all padding
  ShardPlan small = Plan(tiny, 8);
  ASSERT_EQ(small.ranks[7].front().pieces.size(), 1u);
  EXPECT_EQ(small.ranks[7].front().pieces[0].kind, Piece::Kind::Zeros);
  EXPECT_EQ(small.ranks[6].front().pieces[0].rows, 4);  // 96..99
}

TEST(ShardPlanTest, RowParallelTakesColumns) {
  ShardPlan plan = Plan(TinyConfig("LlamaForCausalLM"), 4);
  const RankTensor& o = plan.ranks[3][2];
  ASSERT_EQ(o.name, "model.layers.0.self_attn.o_proj.weight");
  EXPECT_EQ(o.pieces[0].src_col, 48);
  EXPECT_EQ(o.pieces[0].rows, 64);
  EXPECT_EQ(o.row_width(), 16);
}

TEST(ShardPlanTest, TpThatDoesNotDivideFailsSayingWhy) {
  auto spec = ParseModelSpec(TinyConfig("LlamaForCausalLM"));
  ASSERT_TRUE(spec);
  auto layout = ResolveEngineLayout("vllm");
  ASSERT_TRUE(layout);
  auto three = MakeShardPlan(*spec, *layout, 3);
  ASSERT_FALSE(three);
  EXPECT_EQ(three.error().reason, Reason::ShardConfigInvalid);
  EXPECT_NE(three.error().message.find("num_attention_heads 8"), std::string::npos);
  auto zero = MakeShardPlan(*spec, *layout, 0);
  ASSERT_FALSE(zero);
  // 6 heads, 3 KV heads: tp 2 splits the query heads but not the KV heads.
  json odd = TinyConfig("LlamaForCausalLM");
  odd["num_attention_heads"] = 6;
  odd["num_key_value_heads"] = 3;
  odd["hidden_size"] = 48;
  auto odd_spec = ParseModelSpec(odd);
  ASSERT_TRUE(odd_spec);
  auto kv = MakeShardPlan(*odd_spec, *layout, 2);
  ASSERT_FALSE(kv);
  EXPECT_NE(kv.error().message.find("num_key_value_heads 3"), std::string::npos);
  json inter = TinyConfig("LlamaForCausalLM");
  inter["intermediate_size"] = 100;
  auto inter_plan = MakeShardPlan(*ParseModelSpec(inter), *layout, 8);
  ASSERT_FALSE(inter_plan);
  EXPECT_NE(inter_plan.error().message.find("intermediate_size"), std::string::npos);
}

TEST(ShardPlanTest, UnsupportedAndMalformedConfigs) {
  auto gpt2 = ParseModelSpec(json{{"architectures", {"GPT2LMHeadModel"}}});
  ASSERT_FALSE(gpt2);
  EXPECT_EQ(gpt2.error().reason, Reason::UnsupportedArchitecture);
  EXPECT_NE(gpt2.error().message.find("GPT2LMHeadModel"), std::string::npos);
  auto none = ParseModelSpec(json::object());
  ASSERT_FALSE(none);
  EXPECT_EQ(none.error().reason, Reason::UnsupportedArchitecture);
  json quantized = TinyConfig("LlamaForCausalLM");
  quantized["quantization_config"] = {{"quant_method", "fp8"}};
  EXPECT_EQ(ParseModelSpec(quantized).error().reason, Reason::UnsupportedArchitecture);
  json missing = TinyConfig("LlamaForCausalLM");
  missing.erase("hidden_size");
  auto m = ParseModelSpec(missing);
  ASSERT_FALSE(m);
  EXPECT_EQ(m.error().reason, Reason::ShardConfigInvalid);
  EXPECT_NE(m.error().message.find("hidden_size"), std::string::npos);
  json negative = TinyConfig("LlamaForCausalLM");
  negative["num_attention_heads"] = -8;
  EXPECT_EQ(ParseModelSpec(negative).error().reason, Reason::ShardConfigInvalid);
  // num_key_value_heads defaults to the attention heads; head_dim to hidden / heads.
  json mha = TinyConfig("LlamaForCausalLM");
  mha.erase("num_key_value_heads");
  auto spec = ParseModelSpec(mha);
  ASSERT_TRUE(spec);
  EXPECT_EQ(spec->num_kv_heads, 8);
  EXPECT_EQ(spec->head_dim, 8);
}

TEST(EngineLayoutTest, ReleasesDifferOnlyInTheScaleBuffers) {
  auto latest = ResolveEngineLayout("vllm");
  ASSERT_TRUE(latest);
  EXPECT_EQ(latest->release, std::string(kDefaultVllmRelease));
  EXPECT_TRUE(latest->attention_scale_buffers);
  auto old = ResolveEngineLayout("vllm", "0.13.0");
  ASSERT_TRUE(old);
  EXPECT_FALSE(old->attention_scale_buffers);
  EXPECT_TRUE(ResolveEngineLayout("vllm", "v0.15.1")->attention_scale_buffers);
  EXPECT_FALSE(ResolveEngineLayout("sglang")->attention_scale_buffers);
  EXPECT_EQ(ResolveEngineLayout("tgi").error().reason, Reason::InvalidSpec);
  EXPECT_EQ(ResolveEngineLayout("vllm", "latest").error().reason, Reason::InvalidSpec);
  EXPECT_EQ(ResolveEngineLayout("vllm", "0.5.0").error().reason, Reason::ShardConfigInvalid);
  EXPECT_EQ(RankFileName(*latest, 3, 12), "model-rank-3-part-12.safetensors");
}

}  // namespace
}  // namespace modelcache::shard
