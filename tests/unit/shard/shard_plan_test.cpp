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

// A MoE config as the generator writes it: hidden 64, 8 heads of 16, 2 KV heads, 8 experts of
// 32, dense intermediate 160, vocab 1000.
json MoeConfig(const std::string& arch, int64_t layers = 1) {
  json c = TinyConfig(arch, layers);
  c["head_dim"] = 16;
  c["num_experts"] = 8;
  c["moe_intermediate_size"] = 32;
  c["decoder_sparse_step"] = 1;
  c["mlp_only_layers"] = json::array();
  return c;
}

// Golden state dicts per rank of vLLM >= 0.14 (the release the MoE, Gemma and Phi-3 tables were
// read for): names, shapes and order, with the module aliases resolved the way _filter_subtensors
// resolves them.
TEST(ShardPlanTest, GoldenNewArchitecturesOnVllm014) {
  const std::string scales =
      "model.layers.0.self_attn.attn._k_scale []\n"
      "model.layers.0.self_attn.attn._v_scale []\n"
      "model.layers.0.self_attn.attn._q_scale []\n"
      "model.layers.0.self_attn.attn._prob_scale []\n";
  // Qwen3-MoE: the router is saved as experts._gate (smaller than mlp.gate) where mlp.gate is.
  EXPECT_EQ(Describe(Plan(MoeConfig("Qwen3MoeForCausalLM"), 2).ranks[1]),
            "model.embed_tokens.weight [512,64]\n"
            "model.layers.0.self_attn.qkv_proj.weight [96,64]\n"
            "model.layers.0.self_attn.o_proj.weight [64,64]\n" +
                scales +
                "model.layers.0.self_attn.q_norm.weight [16]\n"
                "model.layers.0.self_attn.k_norm.weight [16]\n"
                "model.layers.0.mlp.experts._gate.weight [8,64]\n"
                "model.layers.0.mlp.experts.w13_weight [8,32,64]\n"
                "model.layers.0.mlp.experts.w2_weight [8,64,16]\n"
                "model.layers.0.input_layernorm.weight [64]\n"
                "model.layers.0.post_attention_layernorm.weight [64]\n"
                "model.norm.weight [64]\n"
                "lm_head.weight [512,64]\n");
  // Qwen2-MoE: the shared expert saved under experts._shared_experts, its gate as expert_gate.
  json qwen2 = MoeConfig("Qwen2MoeForCausalLM");
  qwen2.erase("head_dim");
  qwen2["shared_expert_intermediate_size"] = 96;
  EXPECT_EQ(Describe(Plan(qwen2, 4).ranks[3]),
            "model.embed_tokens.weight [256,64]\n"
            "model.layers.0.self_attn.qkv_proj.weight [32,64]\n"
            "model.layers.0.self_attn.qkv_proj.bias [32]\n"
            "model.layers.0.self_attn.o_proj.weight [64,16]\n" +
                scales +
                "model.layers.0.mlp.gate.weight [8,64]\n"
                "model.layers.0.mlp.experts._shared_experts.expert_gate.weight [1,64]\n"
                "model.layers.0.mlp.experts._shared_experts.gate_up_proj.weight [48,64]\n"
                "model.layers.0.mlp.experts._shared_experts.down_proj.weight [64,24]\n"
                "model.layers.0.mlp.experts.w13_weight [8,16,64]\n"
                "model.layers.0.mlp.experts.w2_weight [8,64,8]\n"
                "model.layers.0.input_layernorm.weight [64]\n"
                "model.layers.0.post_attention_layernorm.weight [64]\n"
                "model.norm.weight [64]\n"
                "lm_head.weight [256,64]\n");
  // Mixtral: block_sparse_moe, every layer sparse, intermediate_size is the experts'.
  json mixtral = TinyConfig("MixtralForCausalLM");
  mixtral["num_local_experts"] = 4;
  std::string m = Describe(Plan(mixtral, 2).ranks[0]);
  EXPECT_NE(m.find(scales + "model.layers.0.block_sparse_moe.gate.weight [4,64]\n"
                            "model.layers.0.block_sparse_moe.experts.w13_weight [4,160,64]\n"
                            "model.layers.0.block_sparse_moe.experts.w2_weight [4,64,80]\n"
                            "model.layers.0.input_layernorm.weight [64]\n"),
            std::string::npos)
      << m;
  // Gemma 3: no lm_head (the embedding keeps its name), q/k norms before attn, four norms.
  json gemma3 = TinyConfig("Gemma3ForCausalLM");
  gemma3["head_dim"] = 32;
  gemma3["num_attention_heads"] = 4;
  gemma3["num_key_value_heads"] = 1;
  EXPECT_EQ(Describe(Plan(gemma3, 4).ranks[2]),
            "model.embed_tokens.weight [256,64]\n"
            "model.layers.0.self_attn.qkv_proj.weight [96,64]\n"
            "model.layers.0.self_attn.o_proj.weight [64,32]\n"
            "model.layers.0.self_attn.q_norm.weight [32]\n"
            "model.layers.0.self_attn.k_norm.weight [32]\n" +
                scales +
                "model.layers.0.mlp.gate_up_proj.weight [80,64]\n"
                "model.layers.0.mlp.down_proj.weight [64,40]\n"
                "model.layers.0.input_layernorm.weight [64]\n"
                "model.layers.0.post_attention_layernorm.weight [64]\n"
                "model.layers.0.pre_feedforward_layernorm.weight [64]\n"
                "model.layers.0.post_feedforward_layernorm.weight [64]\n"
                "model.norm.weight [64]\n");
  // Phi-3 is Llama's layout, read from merged checkpoint tensors; it loads on vllm 0.13 too.
  json phi3 = TinyConfig("Phi3ForCausalLM");
  ShardPlan phi = Plan(phi3, 8, "vllm", "0.13.0");
  EXPECT_EQ(Describe(phi.ranks[5]),
            Describe(Plan(TinyConfig("LlamaForCausalLM"), 8, "vllm", "0.13.0").ranks[5]));
  const RankTensor& qkv = phi.ranks[5][1];  // q head 5, then KV head 5 / 4 = 1 of the merged
  ASSERT_EQ(qkv.pieces.size(), 3u);
  EXPECT_EQ(qkv.pieces[0].source, "model.layers.0.self_attn.qkv_proj.weight");
  EXPECT_EQ(qkv.pieces[0].src_row, 5 * 8);
  EXPECT_EQ(qkv.pieces[1].src_row, 64 + 8);
  EXPECT_EQ(qkv.pieces[2].src_row, 64 + 16 + 8);
  const RankTensor& gate_up = phi.ranks[5][3];
  EXPECT_EQ(gate_up.pieces[0].src_row, 5 * 20);
  EXPECT_EQ(gate_up.pieces[1].src_row, 160 + 5 * 20);
  EXPECT_EQ(phi.sources.at("model.layers.0.mlp.gate_up_proj.weight"),
            (std::vector<int64_t>{320, 64}));
  // Dense layers of a MoE model (mlp_only_layers) get the dense MLP.
  json mixed = MoeConfig("Qwen3MoeForCausalLM", 2);
  mixed["mlp_only_layers"] = {0};
  std::string d = Describe(Plan(mixed, 2).ranks[0]);
  EXPECT_NE(d.find("model.layers.0.mlp.gate_up_proj.weight [160,64]"), std::string::npos) << d;
  EXPECT_EQ(d.find("model.layers.0.mlp.experts"), std::string::npos) << d;
  EXPECT_NE(d.find("model.layers.1.mlp.experts.w13_weight"), std::string::npos) << d;
}

Error PlanError(const json& config, int64_t tp, const std::string& engine = "vllm",
                const std::string& release = "") {
  auto plan = PlanFromConfig(config, engine, release, tp);
  EXPECT_FALSE(plan);
  return plan ? Error() : plan.error();
}

void ExpectRefused(const Error& e, Reason reason, const std::string& text) {
  EXPECT_EQ(e.reason, reason) << e.ToString();
  EXPECT_NE(e.message.find(text), std::string::npos) << e.message;
}

// Every refusal names its reason; all are decided from config.json alone.
TEST(ShardPlanTest, RefusalsNameTheirReason) {
  for (const auto& [method, field] :
       std::vector<std::pair<std::string, std::string>>{{"fp8", "quant_method"},
                                                        {"gptq", "quant_method"},
                                                        {"awq", "quant_method"},
                                                        {"compressed-tensors", "quant_method"},
                                                        {"mxfp4", "quant_method"},
                                                        {"modelopt", "quant_method"}}) {
    json q = MoeConfig("Qwen3MoeForCausalLM");
    q["quantization_config"] = {{field, method}, {"weight_block_size", {128, 128}}};
    ExpectRefused(PlanError(q, 2), Reason::UnsupportedArchitecture,
                  "quantization_config " + field + " \"" + method + "\"");
  }
  json compressed = TinyConfig("LlamaForCausalLM");
  compressed["compression_config"] = {{"format", "nvfp4-pack-quantized"}};
  ExpectRefused(PlanError(compressed, 2), Reason::UnsupportedArchitecture,
                "compression_config format \"nvfp4-pack-quantized\"");
  json vlm = TinyConfig("Gemma3ForConditionalGeneration");
  ExpectRefused(PlanError(vlm, 2), Reason::UnsupportedArchitecture, "multimodal");
  ExpectRefused(PlanError(TinyConfig("DeepseekV3ForCausalLM"), 2), Reason::UnsupportedArchitecture,
                "multi-head latent attention (MLA)");
  // MoE and Gemma: not for SGLang, not for vLLM releases whose classes were not read.
  ExpectRefused(PlanError(MoeConfig("Qwen3MoeForCausalLM"), 2, "sglang"),
                Reason::UnsupportedArchitecture, "fused-MoE backends rearrange expert weights");
  ExpectRefused(PlanError(TinyConfig("Gemma2ForCausalLM"), 2, "sglang"),
                Reason::UnsupportedArchitecture, "shard Gemma models for vllm");
  ExpectRefused(PlanError(MoeConfig("Qwen3MoeForCausalLM"), 2, "vllm", "0.13.0"),
                Reason::UnsupportedArchitecture, "read for vllm >= 0.14.0 only");
  json mixtral = TinyConfig("MixtralForCausalLM");
  mixtral["num_local_experts"] = 4;
  EXPECT_TRUE(PlanFromConfig(mixtral, "vllm", "0.17.1", 2));
  ExpectRefused(PlanError(mixtral, 2, "vllm", "0.18.0"), Reason::UnsupportedArchitecture,
                ">=0.14.0,<0.18.0 only");
  EXPECT_TRUE(PlanFromConfig(TinyConfig("Gemma2ForCausalLM"), "vllm", "0.18.0", 2));
  EXPECT_TRUE(PlanFromConfig(TinyConfig("Phi3ForCausalLM"), "sglang", "", 2));
  // MoE sizes tp must divide; no more ranks than experts.
  json few = MoeConfig("Qwen3MoeForCausalLM");
  few["num_experts"] = 4;
  ExpectRefused(PlanError(few, 8), Reason::ShardConfigInvalid, "greater than the 4 experts");
  json odd = MoeConfig("Qwen3MoeForCausalLM");
  odd["moe_intermediate_size"] = 36;
  ExpectRefused(PlanError(odd, 8), Reason::ShardConfigInvalid, "moe_intermediate_size");
  json shared = MoeConfig("Qwen2MoeForCausalLM");
  shared.erase("head_dim");
  shared["shared_expert_intermediate_size"] = 100;
  ExpectRefused(PlanError(shared, 8), Reason::ShardConfigInvalid,
                "shared_expert_intermediate_size 100");
  json no_shared = MoeConfig("Qwen2MoeForCausalLM");
  no_shared.erase("head_dim");
  no_shared["shared_expert_intermediate_size"] = 0;
  ExpectRefused(PlanError(no_shared, 2), Reason::ShardConfigInvalid,
                "shared_expert_intermediate_size is 0");
  json no_experts = MoeConfig("Qwen3MoeForCausalLM");
  no_experts.erase("num_experts");
  ExpectRefused(PlanError(no_experts, 2), Reason::ShardConfigInvalid, "num_experts");
  json untied = TinyConfig("GemmaForCausalLM");
  untied["tie_word_embeddings"] = false;
  ExpectRefused(PlanError(untied, 2), Reason::ShardConfigInvalid, "no lm_head");
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
