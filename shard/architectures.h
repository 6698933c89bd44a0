#pragma once

// Architectures as data: one table per HuggingFace architecture saying, for every parameter of the
// engine's model class in registration order, its state-dict key, where its rows come from in the
// checkpoint, and how tensor parallelism cuts it. shard_plan.cpp turns a table, a ModelSpec and an
// EngineLayout into per-rank plans; nothing else in shard/ knows an architecture by name. Adding
// an architecture whose layers are built from the styles below is adding a table here.
//
// clang-format off
// Styles (vllm/model_executor/layers/{linear,vocab_parallel_embedding}.py and
// fused_moe/layer.py; SGLang's copies are the same):
//
//   style              engine layer                  what rank r of tp holds
//   -----------------  ----------------------------  -------------------------------------------
//   VocabParallel      VocabParallelEmbedding,       rows padded to P = a multiple of 64;
//                      ParallelLMHead                padded rows [r*P/tp, (r+1)*P/tp)
//   Qkv                QKVParallelLinear from        [q heads of r; k group; v group]; KV heads
//                      q, k, v sources               replicated on tp/kv consecutive ranks
//                                                    when tp > kv
//   QkvFused           the same from one merged      as Qkv (Phi-3)
//                      qkv source
//   MergedColumn       MergedColumnParallelLinear    [gate rows of r; up rows of r]
//                      from gate, up sources
//   MergedColumnFused  the same from one merged      as MergedColumn (Phi-3)
//                      gate_up source
//   Row                RowParallelLinear             columns of r
//   Replicated         norms, routers, biases of     the whole tensor
//                      row-parallel layers
//   ExpertsW13         FusedMoE w13_weight           [E, 2*I/tp, H]: per expert, gate rows of r
//                                                    then up rows of r
//   ExpertsW2          FusedMoE w2_weight            [E, H, I/tp]: per expert, columns of r
//   AttentionScales    the attention's scale         float32 scalars, 1.0
//                      buffers                       (EngineLayout::attention_scale_buffers)
// clang-format on

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace modelcache::shard {

// A size taken from config.json (see ModelSpec), by which a parameter is shaped.
enum class Dim {
  One,
  Hidden,
  Vocab,
  QSize,
  KvSize,
  HeadDim,
  Inter,
  MoeInter,
  SharedInter,
  Experts
};

enum class Style {
  VocabParallel,
  Qkv,
  QkvFused,
  MergedColumn,
  MergedColumnFused,
  Row,
  Replicated,
  ExpertsW13,
  ExpertsW2,
  AttentionScales,
};

// Where a parameter lives: once in the model, in every layer, or only in the layers whose MLP is
// dense (or sparse) as config.json says.
enum class Scope { Model, Layer, DenseMlp, SparseMlp };

// When a parameter exists besides its scope.
enum class When { Always, Untied, QkvBias, OProjBias, SharedExpert };

// Another name the engine registers the same tensor under (a module passed to a second parent).
// The loaders' _filter_subtensors keeps the lexicographically smallest name of a storage, at the
// position of the storage's first appearance. Which aliases a release has is the EngineLayout's
// business (engine_layout.h: HasAlias).
enum class Alias {
  TiedLmHead,             // lm_head is embed_tokens (tie_word_embeddings)
  MoeRouterInExperts,     // SharedFusedMoE(gate=...) registers the router as experts._gate
  SharedExpertInExperts,  // SharedFusedMoE(shared_experts=...) registers experts._shared_experts
  SharedExpertGateInMlp,  // the shared expert MLP holds shared_expert_gate as expert_gate
};

struct AliasRule {
  Alias alias;
  std::string key;  // relative like ParamRule::key
};

struct ParamRule {
  ParamRule(Scope rule_scope, std::string rule_key, Style rule_style,
            std::vector<std::string> rule_sources, Dim rule_rows = Dim::One,
            Dim rule_cols = Dim::One, When rule_when = When::Always,
            std::vector<AliasRule> rule_aliases = {})
      : scope(rule_scope),
        key(std::move(rule_key)),
        style(rule_style),
        sources(std::move(rule_sources)),
        rows(rule_rows),
        cols(rule_cols),
        when(rule_when),
        aliases(std::move(rule_aliases)) {}

  Scope scope = Scope::Layer;
  // State-dict key. In layer scopes relative to "model.layers.N."; for AttentionScales the module
  // prefix ("self_attn.attn.") the buffer names are appended to.
  std::string key;
  Style style = Style::Replicated;
  // Checkpoint tensors, relative like key; "{e}" stands for the expert index.
  std::vector<std::string> sources;
  Dim rows = Dim::One;  // the source's dim 0 (output features)
  Dim cols = Dim::One;  // the source's dim 1 (input features); One for a 1-D tensor
  When when = When::Always;
  std::vector<AliasRule> aliases;
};

// Which attention projections have biases.
enum class BiasRule {
  None,
  Llama,                // attention_bias or bias on qkv and o_proj; a qkv_bias field overrides qkv
  QkvAlways,            // Qwen2: qkv always, o_proj never
  QkvIfAttentionBias,   // Qwen3: qkv if attention_bias
  BothIfAttentionBias,  // Gemma 2/3: qkv and o_proj if attention_bias
};

// How config.json describes the experts of a Mixture-of-Experts model.
struct MoeConfigKeys {
  std::string_view num_experts;          // "num_experts" | "num_local_experts"
  std::string_view intermediate;         // "moe_intermediate_size" | "intermediate_size"
  std::string_view shared_intermediate;  // "" | "shared_expert_intermediate_size"
  bool sparse_step = false;              // decoder_sparse_step and mlp_only_layers pick layers
};

struct Architecture {
  std::string_view name;          // config.json architectures[0]
  std::string_view engine_class;  // the engine's model class (docs and errors)
  BiasRule bias = BiasRule::None;
  // The model has no lm_head module at all: the logits use embed_tokens (Gemma). config.json must
  // not untie it.
  bool embedding_is_lm_head = false;
  bool moe = false;
  MoeConfigKeys moe_keys;
  // vLLM releases whose model code was read for this table: false = every release we produce
  // (vllm >= 0.6.0), true = only those whose EngineLayout::recent_model_code is set.
  bool needs_recent_vllm = false;
  // Empty: SGLang loads this layout as vLLM does (minus vLLM's scale buffers). Otherwise why not.
  std::string_view sglang_refusal;
  std::vector<ParamRule> params;
};

// The supported architectures, in the order docs list them.
const std::vector<Architecture>& Architectures();

// nullptr if `name` has no table.
const Architecture* FindArchitecture(std::string_view name);

// Why an architecture the engines serve is refused outright (multimodal wrappers, MLA attention),
// or "" if it is not one of those.
std::string_view RefusalReason(std::string_view name);

}  // namespace modelcache::shard
