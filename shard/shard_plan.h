#pragma once

// Per-architecture tensor-parallel plans: for each rank, the exact state-dict keys, shapes and
// order that the engine's model class has, and where every row of every tensor comes from in the
// HuggingFace checkpoint. A plan is pure data computed from config.json and an EngineLayout; the
// sharder executes it.
//
// Partitioning follows vllm/model_executor/layers/{linear,vocab_parallel_embedding}.py (SGLang's
// copies are the same):
//   qkv_proj   (QKVParallelLinear)  rank r holds [q heads of r; k head group; v head group] along
//              dim 0; with tp >= num_kv_heads each rank holds one KV head, shared by
//              tp / num_kv_heads consecutive ranks (kv index = r / replicas).
//   gate_up_proj (MergedColumnParallelLinear) [gate rows of r; up rows of r].
//   o_proj, down_proj (RowParallelLinear) columns of r along dim 1; a bias is replicated whole.
//   embed_tokens, lm_head (VocabParallelEmbedding / ParallelLMHead) vocab padded to a multiple of
//              64, rank r holds padded rows [r*P/tp, (r+1)*P/tp): real rows first, zero rows after.
//   norms (RMSNorm, q_norm, k_norm) replicated.
// With tie_word_embeddings the engines alias lm_head.weight to embed_tokens.weight and the loaders'
// _filter_subtensors keeps the alphabetically smaller key, so the one tensor is saved as
// "lm_head.weight" where the embedding would be.

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/result.h"
#include "shard/dtype.h"
#include "shard/engine_layout.h"

namespace modelcache::shard {

// What the plan needs from config.json.
struct ModelSpec {
  std::string architecture;  // "LlamaForCausalLM", …
  std::string model_type;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t vocab_size = 0;
  bool tie_word_embeddings = false;
  bool qkv_bias = false;
  bool o_proj_bias = false;
  bool qk_norm = false;
  std::string torch_dtype;  // as config.json says, may be empty
};

// The architectures we have plans for: LlamaForCausalLM (Llama 2, Llama 3.x), MistralForCausalLM,
// Qwen2ForCausalLM (Qwen2, Qwen2.5), Qwen3ForCausalLM.
const std::vector<std::string>& SupportedArchitectures();

// Reads a parsed config.json. UnsupportedArchitecture naming the architecture (or saying none is
// named, or that the checkpoint is quantized); ShardConfigInvalid for a missing or non-positive
// size field or heads that do not divide.
Result<ModelSpec> ParseModelSpec(const nlohmann::json& config);

// One contiguous run of rows of a rank tensor (rows along dim 0; a 1-D tensor's elements count as
// rows of width 1, a scalar is one row).
struct Piece {
  enum class Kind { Copy, Zeros, Ones };
  Kind kind = Kind::Copy;
  std::string source;   // Copy: the checkpoint tensor
  int64_t src_row = 0;  // Copy: first source row
  int64_t src_col = 0;  // Copy: first source column (row-parallel slices of 2-D tensors)
  int64_t rows = 0;
};

struct RankTensor {
  std::string name;  // the engine's state-dict key
  std::vector<int64_t> shape;
  std::optional<DType> dtype;  // set for tensors whose dtype is fixed (scale buffers: F32)
  std::vector<Piece> pieces;   // concatenated along dim 0

  int64_t rows() const { return shape.empty() ? 1 : shape[0]; }
  int64_t row_width() const { return shape.size() >= 2 ? shape[1] : 1; }
};

struct ShardPlan {
  ModelSpec model;
  EngineLayout layout;
  int64_t tensor_parallel_size = 1;
  int64_t padded_vocab = 0;
  // ranks[r]: rank r's tensors in state-dict order (the order the engine's save_model walks).
  std::vector<std::vector<RankTensor>> ranks;
  // Every checkpoint tensor the plan reads, with the shape it must have.
  std::map<std::string, std::vector<int64_t>> sources;

  // Checkpoint tensors the engines skip when loading a checkpoint (rotary inv_freq caches; the
  // lm_head of a tied model), so a checkpoint may hold them without being rejected.
  bool Ignorable(std::string_view name) const;
};

// ShardConfigInvalid saying why when tp does not divide the heads, KV heads, intermediate size or
// padded vocabulary the way the engine requires, or tp < 1.
Result<ShardPlan> MakeShardPlan(const ModelSpec& model, const EngineLayout& layout, int64_t tp);

}  // namespace modelcache::shard
