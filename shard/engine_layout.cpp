#include "shard/engine_layout.h"

#include <array>
#include <charconv>
#include <optional>

namespace modelcache::shard {
namespace {

using Version = std::array<int, 3>;

// "0.14" or "0.14.1"; a "v" prefix and a suffix such as ".post1" or "rc1" after the numbers are
// allowed and ignored (they never change a layout).
std::optional<Version> ParseVersion(std::string_view s) {
  if (!s.empty() && s.front() == 'v') {
    s.remove_prefix(1);
  }
  Version v{0, 0, 0};
  size_t parts = 0;
  while (parts < 3 && !s.empty()) {
    int n = 0;
    auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), n);
    if (ec != std::errc() || ptr == s.data()) {
      break;
    }
    v[parts++] = n;
    s.remove_prefix(static_cast<size_t>(ptr - s.data()));
    if (s.empty() || s.front() != '.') {
      break;
    }
    s.remove_prefix(1);
  }
  if (parts < 2) {
    return std::nullopt;
  }
  return v;
}

}  // namespace

Result<EngineLayout> ResolveEngineLayout(std::string_view engine, std::string_view release) {
  EngineLayout layout;
  layout.engine = std::string(engine);
  if (engine == "vllm") {
    layout.release = release.empty() ? std::string(kDefaultVllmRelease) : std::string(release);
  } else if (engine == "sglang") {
    layout.release = release.empty() ? std::string(kDefaultSglangRelease) : std::string(release);
  } else {
    return Error(Reason::InvalidSpec,
                 "engine '" + std::string(engine) + "' is not one of vllm, sglang");
  }
  auto v = ParseVersion(layout.release);
  if (!v) {
    return Error(Reason::InvalidSpec,
                 "engine release '" + layout.release + "' is not a version such as 0.14.0");
  }
  if (engine == "vllm") {
    if (*v < Version{0, 6, 0}) {
      return Error(Reason::ShardConfigInvalid,
                   "vllm " + layout.release + " is older than 0.6.0, the oldest layout we produce");
    }
    // vllm-project/vllm PR #31395 (merged 2025-12-27, first released in 0.14.0) registered the
    // attention q/k/v/prob scales as buffers, which put them in the state dict.
    layout.attention_scale_buffers = *v >= Version{0, 14, 0};
    layout.compatible = layout.attention_scale_buffers ? ">=0.14.0" : ">=0.6.0,<0.14.0";
    // The Gemma, Phi-3 and MoE classes as read (docs/sharding.md, "Sources").
    layout.recent_model_code = *v >= Version{0, 14, 0};
    layout.moe_model_code = layout.recent_model_code && *v < Version{0, 18, 0};
    layout.moe_compatible = ">=0.14.0,<0.18.0";
    layout.moe_router_in_experts = layout.recent_model_code;
    layout.shared_expert_in_experts = layout.recent_model_code;
    layout.shared_expert_gate_in_mlp = layout.recent_model_code;
  } else {
    if (*v < Version{0, 4, 0}) {
      return Error(
          Reason::ShardConfigInvalid,
          "sglang " + layout.release + " is older than 0.4.0, the oldest layout we produce");
    }
    layout.attention_scale_buffers = false;
    layout.compatible = ">=0.4.0";
  }
  return layout;
}

bool HasAlias(const EngineLayout& layout, Alias alias) {
  switch (alias) {
    case Alias::TiedLmHead:
      return true;
    case Alias::MoeRouterInExperts:
      return layout.moe_router_in_experts;
    case Alias::SharedExpertInExperts:
      return layout.shared_expert_in_experts;
    case Alias::SharedExpertGateInMlp:
      return layout.shared_expert_gate_in_mlp;
  }
  return false;
}

const std::vector<std::string>& AttentionScaleBufferNames() {
  // Registration order in vllm's set_default_quant_scales(register_buffer=True).
  static const std::vector<std::string> names = {"_k_scale", "_v_scale", "_q_scale", "_prob_scale"};
  return names;
}

std::string RankFileName(const EngineLayout& layout, int64_t rank, int64_t part) {
  std::string out;
  const std::string& p = layout.file_pattern;
  for (size_t i = 0; i < p.size();) {
    if (p.compare(i, 6, "{rank}") == 0) {
      out += std::to_string(rank);
      i += 6;
    } else if (p.compare(i, 6, "{part}") == 0) {
      out += std::to_string(part);
      i += 6;
    } else {
      out += p[i++];
    }
  }
  return out;
}

}  // namespace modelcache::shard
