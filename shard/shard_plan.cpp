#include "shard/shard_plan.h"

#include <algorithm>
#include <set>

namespace modelcache::shard {
namespace {

using nlohmann::json;

Error Invalid(const std::string& what) { return {Reason::ShardConfigInvalid, what}; }
Error Unsupported(const std::string& what) { return {Reason::UnsupportedArchitecture, what}; }

// A positive integer field of config.json, or `fallback` when absent or null (if one is given).
Result<int64_t> IntField(const json& config, std::string_view key, std::optional<int64_t> fallback,
                         bool allow_zero = false) {
  auto it = config.find(std::string(key));
  const std::string k(key);
  if (it == config.end() || it->is_null()) {
    if (fallback) {
      return *fallback;
    }
    return Invalid("config.json has no " + k);
  }
  if (!it->is_number_integer() || it->get<int64_t>() < (allow_zero ? 0 : 1)) {
    return Invalid("config.json " + k + " is " + it->dump() + ", not a " +
                   (allow_zero ? "non-negative" : "positive") + " integer");
  }
  return it->get<int64_t>();
}

bool BoolField(const json& config, const char* key) {
  auto it = config.find(key);
  return it != config.end() && it->is_boolean() && it->get<bool>();
}

// Why a quantized checkpoint cannot be sharded on the CPU, naming its quantization method.
std::optional<Error> QuantizationRefusal(const json& config, const std::string& arch) {
  for (const char* key : {"quantization_config", "compression_config"}) {
    auto it = config.find(key);
    if (it == config.end() || it->is_null()) {
      continue;
    }
    std::string method;
    if (it->is_object()) {
      for (const char* field : {"quant_method", "format", "quant_type"}) {
        if (auto m = it->find(field); m != it->end() && m->is_string()) {
          method = std::string(" ") + field + " \"" + m->get<std::string>() + "\"";
          break;
        }
      }
    }
    std::string what = arch;
    what.append(" checkpoint is quantized (config.json ").append(key).append(method);
    return Unsupported(
        what +
        "): the engines post-process quantized weights on the GPU in ways that depend on the GPU "
        "generation, kernel backend and release, so no CPU-written sharded_state is sound for "
        "them; serve it with the engine's normal loader or shard an unquantized checkpoint");
  }
  return std::nullopt;
}

std::string Layer(int64_t i) { return "model.layers." + std::to_string(i) + "."; }

std::string ReplaceExpert(const std::string& s, int64_t e) {
  std::string out = s;
  auto at = out.find("{e}");
  if (at != std::string::npos) {
    out.replace(at, 3, std::to_string(e));
  }
  return out;
}

Piece Copy(std::string source, int64_t src_row, int64_t rows, int64_t src_col = 0) {
  Piece p;
  p.kind = Piece::Kind::Copy;
  p.source = std::move(source);
  p.src_row = src_row;
  p.src_col = src_col;
  p.rows = rows;
  return p;
}

Piece Fill(Piece::Kind kind, int64_t rows) {
  Piece p;
  p.kind = kind;
  p.rows = rows;
  return p;
}

// Builds the plan's tensors from the architecture table.
class Planner {
 public:
  explicit Planner(ShardPlan& plan) : plan_(plan), m_(plan.model), tp_(plan.tensor_parallel_size) {}

  int64_t Size(Dim d) const {
    switch (d) {
      case Dim::One:
        return 1;
      case Dim::Hidden:
        return m_.hidden_size;
      case Dim::Vocab:
        return m_.vocab_size;
      case Dim::QSize:
        return m_.num_heads * m_.head_dim;
      case Dim::KvSize:
        return m_.num_kv_heads * m_.head_dim;
      case Dim::HeadDim:
        return m_.head_dim;
      case Dim::Inter:
        return m_.intermediate_size;
      case Dim::MoeInter:
        return m_.moe_intermediate_size;
      case Dim::SharedInter:
        return m_.shared_expert_intermediate_size;
      case Dim::Experts:
        return m_.num_experts;
    }
    return 0;
  }

  bool Present(const ParamRule& rule, int64_t layer) const {
    if (layer >= 0) {
      const bool sparse = m_.sparse_layers[static_cast<size_t>(layer)];
      if ((rule.scope == Scope::DenseMlp && sparse) ||
          (rule.scope == Scope::SparseMlp && !sparse)) {
        return false;
      }
    }
    switch (rule.when) {
      case When::Always:
        return true;
      case When::Untied:
        return !m_.tie_word_embeddings;
      case When::QkvBias:
        return m_.qkv_bias;
      case When::OProjBias:
        return m_.o_proj_bias;
      case When::SharedExpert:
        return m_.shared_expert_intermediate_size > 0;
    }
    return false;
  }

  // Appends rule's tensor(s) for `rank` (prefix "" or "model.layers.N.") and records the
  // checkpoint tensors it reads.
  void Emit(const ParamRule& rule, const std::string& prefix, int64_t r,
            std::vector<RankTensor>& out) {
    const int64_t rows = Size(rule.rows);
    const int64_t cols = Size(rule.cols);
    const bool one_d = rule.cols == Dim::One;
    auto with_cols = [&](int64_t n) {
      return one_d ? std::vector<int64_t>{n} : std::vector<int64_t>{n, cols};
    };
    auto src = [&](size_t i, int64_t e = -1) {
      return prefix + (e >= 0 ? ReplaceExpert(rule.sources[i], e) : rule.sources[i]);
    };
    std::string name = prefix + rule.key;
    for (const auto& alias : rule.aliases) {
      const bool tied = alias.alias != Alias::TiedLmHead || m_.tie_word_embeddings;
      if (tied && HasAlias(plan_.layout, alias.alias)) {
        std::string aliased = prefix;
        aliased += alias.key;
        name = std::min(name, aliased);
      }
    }
    RankTensor t{name, {}, std::nullopt, {}};
    switch (rule.style) {
      case Style::VocabParallel: {
        const int64_t per_rank = plan_.padded_vocab / tp_;
        const int64_t start = std::min(r * per_rank, m_.vocab_size);
        const int64_t end = std::min((r + 1) * per_rank, m_.vocab_size);
        Source(src(0), {m_.vocab_size, cols});
        t.shape = {per_rank, cols};
        if (end > start) {
          t.pieces.push_back(Copy(src(0), start, end - start));
        }
        if (per_rank > end - start) {
          t.pieces.push_back(Fill(Piece::Kind::Zeros, per_rank - (end - start)));
        }
        break;
      }
      case Style::Qkv:
      case Style::QkvFused: {
        const int64_t q_total = m_.num_heads * m_.head_dim;
        const int64_t kv_total = m_.num_kv_heads * m_.head_dim;
        const int64_t q_rows = m_.num_heads / tp_ * m_.head_dim;
        const int64_t kv_rows = std::max<int64_t>(1, m_.num_kv_heads / tp_) * m_.head_dim;
        const int64_t replicas = tp_ >= m_.num_kv_heads ? tp_ / m_.num_kv_heads : 1;
        const int64_t kv_at = r / replicas * kv_rows;
        t.shape = with_cols(q_rows + 2 * kv_rows);
        if (rule.style == Style::Qkv) {
          Source(src(0), with_cols(q_total));
          Source(src(1), with_cols(kv_total));
          Source(src(2), with_cols(kv_total));
          t.pieces = {Copy(src(0), r * q_rows, q_rows), Copy(src(1), kv_at, kv_rows),
                      Copy(src(2), kv_at, kv_rows)};
        } else {
          Source(src(0), with_cols(q_total + 2 * kv_total));
          t.pieces = {Copy(src(0), r * q_rows, q_rows), Copy(src(0), q_total + kv_at, kv_rows),
                      Copy(src(0), q_total + kv_total + kv_at, kv_rows)};
        }
        break;
      }
      case Style::MergedColumn:
      case Style::MergedColumnFused: {
        const int64_t n = rows / tp_;
        t.shape = with_cols(2 * n);
        if (rule.style == Style::MergedColumn) {
          Source(src(0), with_cols(rows));
          Source(src(1), with_cols(rows));
          t.pieces = {Copy(src(0), r * n, n), Copy(src(1), r * n, n)};
        } else {
          Source(src(0), with_cols(2 * rows));
          t.pieces = {Copy(src(0), r * n, n), Copy(src(0), rows + r * n, n)};
        }
        break;
      }
      case Style::Row: {
        const int64_t n = cols / tp_;
        Source(src(0), {rows, cols});
        t.shape = {rows, n};
        t.pieces = {Copy(src(0), 0, rows, r * n)};
        break;
      }
      case Style::Replicated: {
        Source(src(0), with_cols(rows));
        t.shape = with_cols(rows);
        t.pieces = {Copy(src(0), 0, rows)};
        break;
      }
      case Style::ExpertsW13: {
        const int64_t n = rows / tp_;
        t.shape = {m_.num_experts, 2 * n, cols};
        for (int64_t e = 0; e < m_.num_experts; ++e) {
          Source(src(0, e), {rows, cols});
          Source(src(1, e), {rows, cols});
          t.pieces.push_back(Copy(src(0, e), r * n, n));
          t.pieces.push_back(Copy(src(1, e), r * n, n));
        }
        break;
      }
      case Style::ExpertsW2: {
        const int64_t n = cols / tp_;
        t.shape = {m_.num_experts, rows, n};
        for (int64_t e = 0; e < m_.num_experts; ++e) {
          Source(src(0, e), {rows, cols});
          t.pieces.push_back(Copy(src(0, e), 0, rows, r * n));
        }
        break;
      }
      case Style::AttentionScales: {
        if (plan_.layout.attention_scale_buffers) {
          for (const auto& buffer : AttentionScaleBufferNames()) {
            out.push_back(RankTensor{name + buffer, {}, DType::F32, {Fill(Piece::Kind::Ones, 1)}});
          }
        }
        return;
      }
    }
    out.push_back(std::move(t));
  }

 private:
  void Source(const std::string& name, std::vector<int64_t> shape) {
    plan_.sources[name] = std::move(shape);
  }

  ShardPlan& plan_;
  const ModelSpec& m_;
  int64_t tp_;
};

}  // namespace

int64_t RankTensor::rows() const {
  if (shape.empty()) {
    return 1;
  }
  if (shape.size() == 1) {
    return shape[0];
  }
  int64_t n = 1;
  for (size_t i = 0; i + 1 < shape.size(); ++i) {
    n *= shape[i];
  }
  return n;
}

std::vector<std::string> SupportedArchitectures() {
  std::vector<std::string> names;
  for (const auto& a : Architectures()) {
    names.emplace_back(a.name);
  }
  return names;
}

Result<ModelSpec> ParseModelSpec(const json& config) {
  if (!config.is_object()) {
    return Invalid("config.json is not a JSON object");
  }
  ModelSpec m;
  auto archs = config.find("architectures");
  if (archs == config.end() || !archs->is_array() || archs->empty() || !(*archs)[0].is_string()) {
    return Unsupported("config.json names no architecture");
  }
  m.architecture = (*archs)[0].get<std::string>();
  if (auto refusal = QuantizationRefusal(config, m.architecture)) {
    return *refusal;
  }
  if (auto reason = RefusalReason(m.architecture); !reason.empty()) {
    return Unsupported("architecture " + m.architecture + " " + std::string(reason));
  }
  m.table = FindArchitecture(m.architecture);
  if (m.table == nullptr) {
    std::string list;
    for (const auto& a : SupportedArchitectures()) {
      list += (list.empty() ? "" : ", ") + a;
    }
    return Unsupported("architecture " + m.architecture + " is not supported (supported: " + list +
                       ")");
  }
  const Architecture& arch = *m.table;
  if (auto it = config.find("model_type"); it != config.end() && it->is_string()) {
    m.model_type = it->get<std::string>();
  }
  if (auto it = config.find("torch_dtype"); it != config.end() && it->is_string()) {
    m.torch_dtype = it->get<std::string>();
  } else if (auto d = config.find("dtype"); d != config.end() && d->is_string()) {
    m.torch_dtype = d->get<std::string>();
  }
  auto hidden = IntField(config, "hidden_size", std::nullopt);
  auto layers = IntField(config, "num_hidden_layers", std::nullopt);
  auto heads = IntField(config, "num_attention_heads", std::nullopt);
  auto vocab = IntField(config, "vocab_size", std::nullopt);
  for (const auto* r : {&hidden, &layers, &heads, &vocab}) {
    if (!*r) {
      return r->error();
    }
  }
  auto kv = IntField(config, "num_key_value_heads", *heads);
  if (!kv) {
    return kv.error();
  }
  m.hidden_size = *hidden;
  m.num_layers = *layers;
  m.num_heads = *heads;
  m.num_kv_heads = *kv;
  m.vocab_size = *vocab;
  // head_dim: explicit in Qwen3, Gemma, Mistral-Nemo and Llama 3.x configs; otherwise
  // hidden / heads, as the engines compute it.
  if (m.hidden_size % m.num_heads != 0 &&
      !(config.contains("head_dim") && !config["head_dim"].is_null())) {
    return Invalid("hidden_size " + std::to_string(m.hidden_size) +
                   " is not divisible by num_attention_heads " + std::to_string(m.num_heads) +
                   " and config.json has no head_dim");
  }
  auto head_dim = IntField(config, "head_dim", m.hidden_size / m.num_heads);
  if (!head_dim) {
    return head_dim.error();
  }
  m.head_dim = *head_dim;
  if (m.num_heads % m.num_kv_heads != 0) {
    return Invalid("num_attention_heads " + std::to_string(m.num_heads) +
                   " is not a multiple of num_key_value_heads " + std::to_string(m.num_kv_heads));
  }
  if (arch.embedding_is_lm_head) {
    // The engine's class has no lm_head and asserts the tie.
    if (config.contains("tie_word_embeddings") && !BoolField(config, "tie_word_embeddings")) {
      return Invalid("config.json tie_word_embeddings is false, but " + m.architecture +
                     " computes logits with embed_tokens (it has no lm_head)");
    }
    m.tie_word_embeddings = true;
  } else {
    m.tie_word_embeddings = BoolField(config, "tie_word_embeddings");
  }
  switch (arch.bias) {
    case BiasRule::None:
      break;
    case BiasRule::Llama:
      // LlamaDecoderLayer: bias = attention_bias or bias (internlm), on qkv_proj and o_proj
      // alike, except that a qkv_bias field (internlm3) overrides it for qkv_proj in vllm.
      m.o_proj_bias = BoolField(config, "attention_bias") || BoolField(config, "bias");
      m.qkv_bias = config.contains("qkv_bias") ? BoolField(config, "qkv_bias") : m.o_proj_bias;
      break;
    case BiasRule::QkvAlways:
      m.qkv_bias = true;
      break;
    case BiasRule::QkvIfAttentionBias:
      m.qkv_bias = BoolField(config, "attention_bias");
      break;
    case BiasRule::BothIfAttentionBias:
      m.qkv_bias = m.o_proj_bias = BoolField(config, "attention_bias");
      break;
  }

  m.sparse_layers.assign(static_cast<size_t>(m.num_layers), false);
  if (arch.moe) {
    const MoeConfigKeys& k = arch.moe_keys;
    auto experts = IntField(config, k.num_experts, std::nullopt);
    if (!experts) {
      return experts.error();
    }
    auto moe_inter = IntField(config, k.intermediate, std::nullopt);
    if (!moe_inter) {
      return moe_inter.error();
    }
    m.num_experts = *experts;
    m.moe_intermediate_size = *moe_inter;
    if (!k.shared_intermediate.empty()) {
      // Required: the engine registers shared_expert_gate even without a shared expert, but
      // none of its aliases then; no such checkpoint was read, so none is guessed at.
      auto shared = IntField(config, k.shared_intermediate, std::nullopt);
      if (!shared) {
        return shared.error();
      }
      m.shared_expert_intermediate_size = *shared;
    }
    // Qwen MoE decoder layers: sparse unless listed in mlp_only_layers, and only every
    // decoder_sparse_step-th layer.
    int64_t step = 1;
    std::set<int64_t> mlp_only;
    if (k.sparse_step) {
      auto s = IntField(config, "decoder_sparse_step", 1);
      if (!s) {
        return s.error();
      }
      step = *s;
      if (auto it = config.find("mlp_only_layers"); it != config.end() && !it->is_null()) {
        if (!it->is_array()) {
          return Invalid("config.json mlp_only_layers is not a list");
        }
        for (const auto& v : *it) {
          if (!v.is_number_integer()) {
            return Invalid("config.json mlp_only_layers holds " + v.dump() + ", not a layer index");
          }
          mlp_only.insert(v.get<int64_t>());
        }
      }
    }
    for (int64_t i = 0; i < m.num_layers; ++i) {
      m.sparse_layers[static_cast<size_t>(i)] = mlp_only.count(i) == 0 && (i + 1) % step == 0;
    }
  }
  const bool any_dense =
      std::find(m.sparse_layers.begin(), m.sparse_layers.end(), false) != m.sparse_layers.end();
  if (any_dense) {
    auto inter = IntField(config, "intermediate_size", std::nullopt);
    if (!inter) {
      return inter.error();
    }
    m.intermediate_size = *inter;
  } else if (auto inter = IntField(config, "intermediate_size", 0, true); inter) {
    m.intermediate_size = *inter;  // unused by the plan; kept for the record
  }
  return m;
}

bool ShardPlan::Ignorable(std::string_view name) const {
  auto ends_with = [&](std::string_view suffix) {
    return name.size() >= suffix.size() && name.substr(name.size() - suffix.size()) == suffix;
  };
  if (ends_with("rotary_emb.inv_freq") || ends_with("rotary_emb.cos_cached") ||
      ends_with("rotary_emb.sin_cached")) {
    return true;
  }
  return model.tie_word_embeddings && name == "lm_head.weight";
}

Result<ShardPlan> MakeShardPlan(const ModelSpec& m, const EngineLayout& layout, int64_t tp) {
  if (tp < 1) {
    return Invalid("tensorParallelSize must be at least 1, not " + std::to_string(tp));
  }
  if (m.table == nullptr) {
    return Unsupported("architecture " + m.architecture + " has no table");
  }
  const Architecture& arch = *m.table;
  if (layout.engine == "sglang" && !arch.sglang_refusal.empty()) {
    return Unsupported(m.architecture +
                       " cannot be sharded for sglang: " + std::string(arch.sglang_refusal));
  }
  if (layout.engine == "vllm" && arch.needs_recent_vllm && !layout.recent_model_code) {
    return Unsupported(m.architecture + " cannot be sharded for vllm " + layout.release + ": " +
                       std::string(arch.engine_class) +
                       "'s state dict was read for vllm >= 0.14.0 only (module aliases and "
                       "buffers differ between releases)");
  }
  if (layout.engine == "vllm" && arch.moe && !layout.moe_model_code) {
    return Unsupported(m.architecture + " cannot be sharded for vllm " + layout.release +
                       ": the fused-MoE module names were read for vllm " + layout.moe_compatible +
                       " only (the MoE layer was refactored after)");
  }
  const std::string tps = std::to_string(tp);
  auto indivisible = [&](const std::string& what, int64_t n) {
    return Invalid(what + " " + std::to_string(n) + " is not divisible by tensorParallelSize " +
                   tps);
  };
  if (m.num_heads % tp != 0) {
    return indivisible("num_attention_heads", m.num_heads);
  }
  if (tp >= m.num_kv_heads ? tp % m.num_kv_heads != 0 : m.num_kv_heads % tp != 0) {
    return Invalid("num_key_value_heads " + std::to_string(m.num_kv_heads) +
                   " and tensorParallelSize " + tps +
                   ": one must divide the other (KV heads are split or replicated evenly)");
  }
  const bool any_sparse =
      std::find(m.sparse_layers.begin(), m.sparse_layers.end(), true) != m.sparse_layers.end();
  const bool any_dense =
      std::find(m.sparse_layers.begin(), m.sparse_layers.end(), false) != m.sparse_layers.end();
  if (any_dense && m.intermediate_size % tp != 0) {
    return indivisible("intermediate_size", m.intermediate_size);
  }
  if (any_sparse) {
    const std::string inter_key(arch.moe_keys.intermediate);
    if (m.moe_intermediate_size % tp != 0) {
      return indivisible(inter_key + " (each expert's intermediate size)", m.moe_intermediate_size);
    }
    if (m.shared_expert_intermediate_size % tp != 0) {
      return indivisible("shared_expert_intermediate_size", m.shared_expert_intermediate_size);
    }
    if (tp > m.num_experts) {
      return Invalid("tensorParallelSize " + tps + " is greater than the " +
                     std::to_string(m.num_experts) + " experts (" +
                     std::string(arch.moe_keys.num_experts) + "), which the engine refuses");
    }
  }
  ShardPlan plan;
  plan.model = m;
  plan.layout = layout;
  plan.tensor_parallel_size = tp;
  const int64_t pad = layout.vocab_padding;
  plan.padded_vocab = (m.vocab_size + pad - 1) / pad * pad;
  if (plan.padded_vocab % tp != 0) {
    return Invalid("vocabulary padded to " + std::to_string(plan.padded_vocab) +
                   " is not divisible by tensorParallelSize " + tps);
  }

  // The table in three runs: model parameters before the layers, the layers, model parameters
  // after them.
  const auto& rules = arch.params;
  auto first_layer = std::find_if(rules.begin(), rules.end(),
                                  [](const ParamRule& p) { return p.scope != Scope::Model; });
  auto after_layers = std::find_if(first_layer, rules.end(),
                                   [](const ParamRule& p) { return p.scope == Scope::Model; });
  Planner planner(plan);
  plan.ranks.resize(static_cast<size_t>(tp));
  for (int64_t r = 0; r < tp; ++r) {
    auto& out = plan.ranks[static_cast<size_t>(r)];
    for (auto it = rules.begin(); it != first_layer; ++it) {
      if (planner.Present(*it, -1)) {
        planner.Emit(*it, "", r, out);
      }
    }
    for (int64_t i = 0; i < m.num_layers; ++i) {
      const std::string prefix = Layer(i);
      for (auto it = first_layer; it != after_layers; ++it) {
        if (planner.Present(*it, i)) {
          planner.Emit(*it, prefix, r, out);
        }
      }
    }
    for (auto it = after_layers; it != rules.end(); ++it) {
      if (planner.Present(*it, -1)) {
        planner.Emit(*it, "", r, out);
      }
    }
  }
  return plan;
}

Result<ShardPlan> PlanFromConfig(const json& config, std::string_view engine,
                                 std::string_view release, int64_t tp) {
  auto layout = ResolveEngineLayout(engine, release);
  if (!layout) {
    return layout.error();
  }
  auto model = ParseModelSpec(config);
  if (!model) {
    return model.error();
  }
  return MakeShardPlan(*model, *layout, tp);
}

}  // namespace modelcache::shard
