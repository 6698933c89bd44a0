#pragma once

// What an inference engine's `--load-format sharded_state` loader expects, per engine release.
// This is the ONE place where engine releases differ; everything else in shard/ reads an
// EngineLayout instead of comparing version strings.
//
// Both engines' ShardedStateLoader load `model-rank-{rank}-part-{part}.safetensors` by matching
// every key of the rank's `model.state_dict()` (after dropping tensors that alias another one's
// memory, keeping the alphabetically smaller key) against the files' keys, and fail on a missing or
// an unexpected key. So a layout is the exact set of state-dict keys, shapes and partitioning.
//
// Releases verified against the engines' source (docs/sharding.md has the details):
//   vllm >= 0.14.0: every attention layer registers _k_scale, _v_scale, _q_scale, _prob_scale as
//                   float32 scalar buffers (vllm-project/vllm PR #31395), so they are in the state
//                   dict and must be in the files (value 1.0 for unquantized checkpoints).
//   vllm 0.6.0 – 0.13.x: those scales are plain attributes, not in the state dict.
//   sglang >= 0.4.0: RadixAttention registers no buffers; same layout as vllm 0.13.
// Rotary cos_sin_cache buffers are non-persistent in all of them and never saved.
//
// Model code that differs by release (architectures.h marks the tables that depend on it):
//   vllm >= 0.14.0: the Gemma, Phi-3, Mixtral, Qwen2-MoE and Qwen3-MoE classes as read
//       (docs/sharding.md names the files and commits). Gemma's normalizer buffer is registered
//       with persistent=False (not saved). Qwen3-MoE passes its router to SharedFusedMoE, which
//       registers it again as experts._gate. Qwen2-MoE's shared expert is also registered as
//       experts._shared_experts and holds shared_expert_gate as expert_gate (so the gate is
//       also experts._shared_experts.expert_gate: the two shared-expert aliases are set
//       together). The loaders keep the smallest of a storage's names, so these aliases decide
//       the saved keys.
//   vllm < 0.14.0: those classes were not read; their architectures are refused for it.
//   vllm >= 0.18.0: not produced for MoE (MoE artifacts say ">=0.14.0,<0.18.0"). The fused-MoE
//       layer was rebuilt after 0.16: docs.vllm.ai's v0.16.0 API pages show
//       `class FusedMoE(CustomOp)` and SharedFusedMoE registering _shared_experts; by v0.18.1
//       SharedFusedMoE has no __init__ of its own; the v0.26.0 pages show `FusedMoE(...)` as a
//       factory building a Router, a RoutedExperts module and a MoERunner (PR #41184, merged
//       between 2026-04-29 and 2026-06-29, so first in one of 0.21 - 0.25). In the stored source
//       (commits not tied to a tag; docs/sharding.md, "Newer vLLM releases") MoERunner
//       registers router, gate, shared_expert_gate, routed_experts (owning w13_weight,
//       w2_weight) and _shared_experts in that order, so the saved names become
//       mlp.experts.routed_experts.w13_weight and, where a model passes its router as gate,
//       mlp.experts.gate.weight. Neither 0.17 - 0.18 nor the release with PR #41184, nor the
//       model classes of 0.18 - 0.29, were read at a tag; until they are, MoE is refused there.
//   The newest vLLM release with stored documentation is 0.29.0; the default stays 0.14.0
//   because no later release's state dict could be read at its tag.

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "shard/architectures.h"

namespace modelcache::shard {

struct EngineLayout {
  std::string engine;                    // "vllm" | "sglang"
  std::string release;                   // the release the output is produced for, e.g. "0.14.0"
  std::string compatible;                // the releases that load it, e.g. ">=0.14.0"
  bool attention_scale_buffers = false;  // attn._k_scale, _v_scale, _q_scale, _prob_scale
  // The model classes of the tables marked Architecture::needs_recent_vllm were read for this
  // release line.
  bool recent_model_code = false;
  // The MoE classes (fused_moe/layer.py, shared_fused_moe.py) were read for this release line;
  // MoE artifacts load in `moe_compatible` rather than `compatible`.
  bool moe_model_code = false;
  std::string moe_compatible;
  // Module aliases (architectures.h: Alias) this release's model classes register.
  bool moe_router_in_experts = false;
  bool shared_expert_in_experts = false;
  bool shared_expert_gate_in_mlp = false;
  int64_t vocab_padding = 64;  // DEFAULT_VOCAB_PADDING_SIZE in both engines
  std::string file_pattern = "model-rank-{rank}-part-{part}.safetensors";
};

// The release produced when the caller names none.
inline constexpr std::string_view kDefaultVllmRelease = "0.14.0";
inline constexpr std::string_view kDefaultSglangRelease = "0.5.3";

// Resolves `engine` ("vllm" | "sglang") and an optional `release` ("" = the pinned default above;
// otherwise "X.Y" or "X.Y.Z") to a layout. InvalidSpec for an unknown engine or a malformed
// release; ShardConfigInvalid for a release older than any layout we know.
Result<EngineLayout> ResolveEngineLayout(std::string_view engine, std::string_view release = "");

// Whether this release's model classes register `alias` (tied lm_head: always, in both engines).
bool HasAlias(const EngineLayout& layout, Alias alias);

// The names of the per-attention-layer scale buffers, in registration order.
const std::vector<std::string>& AttentionScaleBufferNames();

// "model-rank-3-part-0.safetensors".
std::string RankFileName(const EngineLayout& layout, int64_t rank, int64_t part);

}  // namespace modelcache::shard
