#include "shard/architectures.h"

#include <algorithm>
#include <utility>

namespace modelcache::shard {
namespace {

// Building blocks, in the registration order of the engines' modules. Each architecture's table
// is these blocks concatenated; the comments name the engine code they follow.

using Params = std::vector<ParamRule>;

Params Concat(std::initializer_list<Params> parts) {
  Params out;
  for (const auto& p : parts) {
    out.insert(out.end(), p.begin(), p.end());
  }
  return out;
}

// VocabParallelEmbedding; with tie_word_embeddings LlamaForCausalLM ties lm_head to it, and the
// loaders keep the smaller name, "lm_head.weight".
Params Embedding(bool lm_head_alias) {
  ParamRule p{Scope::Model,         "model.embed_tokens.weight",
              Style::VocabParallel, {"model.embed_tokens.weight"},
              Dim::Vocab,           Dim::Hidden};
  if (lm_head_alias) {
    p.aliases = {{Alias::TiedLmHead, "lm_head.weight"}};
  }
  return {p};
}

// QKVParallelLinear + RowParallelLinear o_proj (+ the bias each may have).
Params QkvAndO(bool fused) {
  Params out;
  if (fused) {
    out.push_back({Scope::Layer,
                   "self_attn.qkv_proj.weight",
                   Style::QkvFused,
                   {"self_attn.qkv_proj.weight"},
                   Dim::QSize,
                   Dim::Hidden});
  } else {
    out.push_back(
        {Scope::Layer,
         "self_attn.qkv_proj.weight",
         Style::Qkv,
         {"self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"},
         Dim::QSize,
         Dim::Hidden});
    out.push_back({Scope::Layer,
                   "self_attn.qkv_proj.bias",
                   Style::Qkv,
                   {"self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"},
                   Dim::QSize,
                   Dim::One,
                   When::QkvBias});
  }
  out.push_back({Scope::Layer,
                 "self_attn.o_proj.weight",
                 Style::Row,
                 {"self_attn.o_proj.weight"},
                 Dim::Hidden,
                 Dim::QSize});
  out.push_back({Scope::Layer,
                 "self_attn.o_proj.bias",
                 Style::Replicated,
                 {"self_attn.o_proj.bias"},
                 Dim::Hidden,
                 Dim::One,
                 When::OProjBias});
  return out;
}

Params AttentionScales() {
  return {{Scope::Layer, "self_attn.attn.", Style::AttentionScales, {}, Dim::One, Dim::One}};
}

Params QkNorms() {
  return {{Scope::Layer,
           "self_attn.q_norm.weight",
           Style::Replicated,
           {"self_attn.q_norm.weight"},
           Dim::HeadDim},
          {Scope::Layer,
           "self_attn.k_norm.weight",
           Style::Replicated,
           {"self_attn.k_norm.weight"},
           Dim::HeadDim}};
}

// MergedColumnParallelLinear gate_up_proj + RowParallelLinear down_proj.
Params DenseMlp(bool fused) {
  ParamRule gate_up =
      fused ? ParamRule{Scope::DenseMlp,
                        "mlp.gate_up_proj.weight",
                        Style::MergedColumnFused,
                        {"mlp.gate_up_proj.weight"},
                        Dim::Inter,
                        Dim::Hidden}
            : ParamRule{Scope::DenseMlp,     "mlp.gate_up_proj.weight",
                        Style::MergedColumn, {"mlp.gate_proj.weight", "mlp.up_proj.weight"},
                        Dim::Inter,          Dim::Hidden};
  return {gate_up,
          {Scope::DenseMlp,
           "mlp.down_proj.weight",
           Style::Row,
           {"mlp.down_proj.weight"},
           Dim::Hidden,
           Dim::Inter}};
}

ParamRule Norm(const std::string& key) {
  return {Scope::Layer, key, Style::Replicated, {key}, Dim::Hidden};
}

Params TwoNorms() {
  return {Norm("input_layernorm.weight"), Norm("post_attention_layernorm.weight")};
}

// Gemma 2 and 3: a norm before and after each of attention and MLP.
Params FourNorms() {
  return {Norm("input_layernorm.weight"), Norm("post_attention_layernorm.weight"),
          Norm("pre_feedforward_layernorm.weight"), Norm("post_feedforward_layernorm.weight")};
}

Params FinalNormAndHead(bool lm_head) {
  Params out = {
      {Scope::Model, "model.norm.weight", Style::Replicated, {"model.norm.weight"}, Dim::Hidden}};
  if (lm_head) {
    out.push_back({Scope::Model,
                   "lm_head.weight",
                   Style::VocabParallel,
                   {"lm_head.weight"},
                   Dim::Vocab,
                   Dim::Hidden,
                   When::Untied});
  }
  return out;
}

// FusedMoE's w13_weight and w2_weight from per-expert checkpoint tensors.
Params Experts(std::string_view prefix, std::string_view gate, std::string_view up,
               std::string_view down) {
  std::string p(prefix);
  return {{Scope::SparseMlp,
           p + "w13_weight",
           Style::ExpertsW13,
           {p + "{e}." + std::string(gate), p + "{e}." + std::string(up)},
           Dim::MoeInter,
           Dim::Hidden},
          {Scope::SparseMlp,
           p + "w2_weight",
           Style::ExpertsW2,
           {p + "{e}." + std::string(down)},
           Dim::Hidden,
           Dim::MoeInter}};
}

ParamRule Router(const std::string& key, bool alias_in_experts) {
  ParamRule p{Scope::SparseMlp, key, Style::Replicated, {key}, Dim::Experts, Dim::Hidden};
  if (alias_in_experts) {
    p.aliases = {{Alias::MoeRouterInExperts, "mlp.experts._gate.weight"}};
  }
  return p;
}

// Qwen2MoeSparseMoeBlock's shared expert: shared_expert_gate (nn.Linear(H, 1)) then the shared
// Qwen2MoeMLP, which also holds the gate as expert_gate; SharedFusedMoE holds the MLP as
// _shared_experts.
Params Qwen2SharedExpert() {
  return {{Scope::SparseMlp,
           "mlp.shared_expert_gate.weight",
           Style::Replicated,
           {"mlp.shared_expert_gate.weight"},
           Dim::One,
           Dim::Hidden,
           When::SharedExpert,
           {{Alias::SharedExpertGateInMlp, "mlp.shared_expert.expert_gate.weight"},
            {Alias::SharedExpertInExperts, "mlp.experts._shared_experts.expert_gate.weight"}}},
          {Scope::SparseMlp,
           "mlp.shared_expert.gate_up_proj.weight",
           Style::MergedColumn,
           {"mlp.shared_expert.gate_proj.weight", "mlp.shared_expert.up_proj.weight"},
           Dim::SharedInter,
           Dim::Hidden,
           When::SharedExpert,
           {{Alias::SharedExpertInExperts, "mlp.experts._shared_experts.gate_up_proj.weight"}}},
          {Scope::SparseMlp,
           "mlp.shared_expert.down_proj.weight",
           Style::Row,
           {"mlp.shared_expert.down_proj.weight"},
           Dim::Hidden,
           Dim::SharedInter,
           When::SharedExpert,
           {{Alias::SharedExpertInExperts, "mlp.experts._shared_experts.down_proj.weight"}}}};
}

constexpr std::string_view kSglangMoe =
    "SGLang's sharded_state loader runs process_weights_after_loading before it copies the saved "
    "tensors, and its fused-MoE backends rearrange expert weights there, so the files would have "
    "to match one GPU backend; shard MoE models for vllm";
constexpr std::string_view kSglangGemma =
    "SGLang's Gemma classes were not checked against its sharded_state loader; shard Gemma models "
    "for vllm";

// A dense architecture every vLLM release we produce has read model code for.
Architecture Dense(std::string_view name, std::string_view engine_class, BiasRule bias,
                   Params params) {
  Architecture a;
  a.name = name;
  a.engine_class = engine_class;
  a.bias = bias;
  a.params = std::move(params);
  return a;
}

// Gemma 1/2/3: no lm_head, vLLM >= 0.14 only, not for SGLang.
Architecture Gemma(std::string_view name, BiasRule bias, Params params) {
  Architecture a = Dense(name, name, bias, std::move(params));
  a.embedding_is_lm_head = true;
  a.needs_recent_vllm = true;
  a.sglang_refusal = kSglangGemma;
  return a;
}

Architecture Moe(std::string_view name, BiasRule bias, MoeConfigKeys keys, Params params) {
  Architecture a = Dense(name, name, bias, std::move(params));
  a.moe = true;
  a.moe_keys = keys;
  a.needs_recent_vllm = true;
  a.sglang_refusal = kSglangMoe;
  return a;
}

std::vector<Architecture> Build() {
  std::vector<Architecture> a;
  // vllm/model_executor/models/llama.py (Mistral's HF architecture maps to the same class).
  Params llama = Concat({Embedding(true), QkvAndO(false), AttentionScales(), DenseMlp(false),
                         TwoNorms(), FinalNormAndHead(true)});
  a.push_back(Dense("LlamaForCausalLM", "LlamaForCausalLM", BiasRule::Llama, llama));
  a.push_back(Dense("MistralForCausalLM", "LlamaForCausalLM", BiasRule::Llama, llama));
  // qwen2.py: qkv bias, no o_proj bias.
  a.push_back(Dense("Qwen2ForCausalLM", "Qwen2ForCausalLM", BiasRule::QkvAlways, llama));
  // qwen3.py: q_norm and k_norm registered after attn.
  Params qwen3_attention = Concat({QkvAndO(false), AttentionScales(), QkNorms()});
  a.push_back(Dense("Qwen3ForCausalLM", "Qwen3ForCausalLM", BiasRule::QkvIfAttentionBias,
                    Concat({Embedding(true), qwen3_attention, DenseMlp(false), TwoNorms(),
                            FinalNormAndHead(true)})));
  // phi3.py: Phi3ForCausalLM is LlamaForCausalLM; the checkpoint holds qkv_proj and gate_up_proj
  // already merged (SGLang: the same class in llama.py).
  a.push_back(Dense("Phi3ForCausalLM", "LlamaForCausalLM", BiasRule::Llama,
                    Concat({Embedding(true), QkvAndO(true), AttentionScales(), DenseMlp(true),
                            TwoNorms(), FinalNormAndHead(true)})));
  // gemma.py, gemma2.py, gemma3.py: no lm_head module (logits use embed_tokens), so the embedding
  // is saved under its own name; the RMSNorm +1 and the embedding scale apply at forward time.
  a.push_back(Gemma("GemmaForCausalLM", BiasRule::None,
                    Concat({Embedding(false), QkvAndO(false), AttentionScales(), DenseMlp(false),
                            TwoNorms(), FinalNormAndHead(false)})));
  a.push_back(Gemma("Gemma2ForCausalLM", BiasRule::BothIfAttentionBias,
                    Concat({Embedding(false), QkvAndO(false), AttentionScales(), DenseMlp(false),
                            FourNorms(), FinalNormAndHead(false)})));
  // Gemma3Attention registers q_norm and k_norm before attn.
  a.push_back(Gemma("Gemma3ForCausalLM", BiasRule::BothIfAttentionBias,
                    Concat({Embedding(false), QkvAndO(false), QkNorms(), AttentionScales(),
                            DenseMlp(false), FourNorms(), FinalNormAndHead(false)})));
  // mixtral.py: MixtralMoE registers gate (ReplicatedLinear) then experts (FusedMoE); every layer
  // is sparse and the experts' intermediate size is intermediate_size.
  a.push_back(Moe(
      "MixtralForCausalLM", BiasRule::None, {"num_local_experts", "intermediate_size", "", false},
      Concat({Embedding(true),
              QkvAndO(false),
              AttentionScales(),
              {{Scope::SparseMlp,
                "block_sparse_moe.gate.weight",
                Style::Replicated,
                {"block_sparse_moe.gate.weight"},
                Dim::Experts,
                Dim::Hidden}},
              Experts("block_sparse_moe.experts.", "w1.weight", "w3.weight", "w2.weight"),
              TwoNorms(),
              FinalNormAndHead(true)})));
  // qwen2_moe.py: gate, shared_expert_gate, shared_expert, experts (SharedFusedMoE).
  Params qwen_experts =
      Experts("mlp.experts.", "gate_proj.weight", "up_proj.weight", "down_proj.weight");
  a.push_back(Moe("Qwen2MoeForCausalLM", BiasRule::QkvAlways,
                  {"num_experts", "moe_intermediate_size", "shared_expert_intermediate_size", true},
                  Concat({Embedding(true),
                          QkvAndO(false),
                          AttentionScales(),
                          {Router("mlp.gate.weight", false)},
                          Qwen2SharedExpert(),
                          qwen_experts,
                          DenseMlp(false),
                          TwoNorms(),
                          FinalNormAndHead(true)})));
  // qwen3_moe.py: gate, then experts (SharedFusedMoE(gate=self.gate), which holds the router as
  // experts._gate); no shared expert.
  a.push_back(Moe("Qwen3MoeForCausalLM", BiasRule::QkvIfAttentionBias,
                  {"num_experts", "moe_intermediate_size", "", true},
                  Concat({Embedding(true),
                          qwen3_attention,
                          {Router("mlp.gate.weight", true)},
                          qwen_experts,
                          DenseMlp(false),
                          TwoNorms(),
                          FinalNormAndHead(true)})));
  return a;
}

}  // namespace

const std::vector<Architecture>& Architectures() {
  static const std::vector<Architecture> all = Build();
  return all;
}

const Architecture* FindArchitecture(std::string_view name) {
  const auto& all = Architectures();
  auto it = std::find_if(all.begin(), all.end(), [&](const auto& a) { return a.name == name; });
  return it == all.end() ? nullptr : &*it;
}

std::string_view RefusalReason(std::string_view name) {
  static const std::vector<std::pair<std::string_view, std::string_view>> refused = {
      {"Gemma3ForConditionalGeneration",
       "is multimodal (a vision tower and projector around the language model); only the "
       "text-only Gemma3ForCausalLM shards"},
      {"DeepseekV2ForCausalLM",
       "uses multi-head latent attention (MLA), whose weights the engines post-process on the GPU"},
      {"DeepseekV3ForCausalLM",
       "uses multi-head latent attention (MLA), whose weights the engines post-process on the GPU"},
      {"DeepseekV32ForCausalLM",
       "uses multi-head latent attention (MLA), whose weights the engines post-process on the GPU"},
  };
  for (const auto& [arch, reason] : refused) {
    if (arch == name) {
      return reason;
    }
  }
  return {};
}

}  // namespace modelcache::shard
