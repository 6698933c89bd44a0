#pragma once

// Tensor-parallel plans: for each rank, the exact state-dict keys, shapes and order that the
// engine's model class has, and where every row of every tensor comes from in the HuggingFace
// checkpoint. A plan is pure data computed from config.json, the architecture's table
// (architectures.h) and an EngineLayout (engine_layout.h); the sharder executes it.
//
// The keys are those the loaders' _filter_subtensors keeps: a tensor registered under several
// names (a tied lm_head, MoE module aliases) is saved once, under its lexicographically smallest
// name, at the position of its first appearance in the state dict; zero-element tensors are
// dropped.

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/result.h"
#include "shard/architectures.h"
#include "shard/dtype.h"
#include "shard/engine_layout.h"

namespace modelcache::shard {

// What the plan needs from config.json.
struct ModelSpec {
  std::string architecture;  // "LlamaForCausalLM", …
  const Architecture* table = nullptr;
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
  // Mixture of experts (0 when dense): experts per sparse layer, their intermediate size, the
  // shared expert's (0: none), and which layers are sparse.
  int64_t num_experts = 0;
  int64_t moe_intermediate_size = 0;
  int64_t shared_expert_intermediate_size = 0;
  std::vector<bool> sparse_layers;
  std::string torch_dtype;  // as config.json says, may be empty
};

// The architectures that have tables, by config.json name.
std::vector<std::string> SupportedArchitectures();

// Reads a parsed config.json. UnsupportedArchitecture naming the architecture and why (none named,
// no table, multimodal or MLA, or quantized: naming quantization_config's quant_method);
// ShardConfigInvalid for a missing or non-positive size field or heads that do not divide.
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
  // Concatenated as rows: a tensor of two or more dimensions is rows of its last dimension (a
  // stacked-experts [E, N, K] tensor is E*N rows of K), a 1-D tensor's elements are rows of one.
  std::vector<Piece> pieces;

  int64_t rows() const;
  int64_t row_width() const { return shape.size() >= 2 ? shape.back() : 1; }
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

// ShardConfigInvalid saying why when tp does not divide the heads, KV heads, intermediate sizes or
// padded vocabulary the way the engine requires, exceeds the experts, or tp < 1;
// UnsupportedArchitecture when the engine release cannot load the architecture this way.
Result<ShardPlan> MakeShardPlan(const ModelSpec& model, const EngineLayout& layout, int64_t tp);

// Everything that can be decided from config.json alone, before any weight is downloaded:
// parses it, resolves the engine layout and builds the plan. The errors of ParseModelSpec,
// ResolveEngineLayout and MakeShardPlan.
Result<ShardPlan> PlanFromConfig(const nlohmann::json& config, std::string_view engine,
                                 std::string_view release, int64_t tp);

}  // namespace modelcache::shard
