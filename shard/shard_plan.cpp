#include "shard/shard_plan.h"

#include <algorithm>

namespace modelcache::shard {
namespace {

using nlohmann::json;

Error Invalid(const std::string& what) { return {Reason::ShardConfigInvalid, what}; }

// A positive integer field of config.json, or `fallback` when absent or null (if one is given).
Result<int64_t> IntField(const json& config, const char* key, std::optional<int64_t> fallback) {
  auto it = config.find(key);
  if (it == config.end() || it->is_null()) {
    if (fallback) {
      return *fallback;
    }
    return Invalid(std::string("config.json has no ") + key);
  }
  if (!it->is_number_integer() || it->get<int64_t>() <= 0) {
    return Invalid(std::string("config.json ") + key + " is " + it->dump() +
                   ", not a positive integer");
  }
  return it->get<int64_t>();
}

bool BoolField(const json& config, const char* key) {
  auto it = config.find(key);
  return it != config.end() && it->is_boolean() && it->get<bool>();
}

std::string Layer(int64_t i) { return "model.layers." + std::to_string(i) + "."; }

Piece Copy(std::string source, int64_t src_row, int64_t rows, int64_t src_col = 0) {
  Piece p;
  p.kind = Piece::Kind::Copy;
  p.source = std::move(source);
  p.src_row = src_row;
  p.src_col = src_col;
  p.rows = rows;
  return p;
}

Piece Zeros(int64_t rows) {
  Piece p;
  p.kind = Piece::Kind::Zeros;
  p.rows = rows;
  return p;
}

}  // namespace

const std::vector<std::string>& SupportedArchitectures() {
  static const std::vector<std::string> architectures = {"LlamaForCausalLM", "MistralForCausalLM",
                                                         "Qwen2ForCausalLM", "Qwen3ForCausalLM"};
  return architectures;
}

Result<ModelSpec> ParseModelSpec(const json& config) {
  if (!config.is_object()) {
    return Invalid("config.json is not a JSON object");
  }
  ModelSpec m;
  auto archs = config.find("architectures");
  if (archs == config.end() || !archs->is_array() || archs->empty() || !(*archs)[0].is_string()) {
    return Error(Reason::UnsupportedArchitecture, "config.json names no architecture");
  }
  m.architecture = (*archs)[0].get<std::string>();
  const auto& supported = SupportedArchitectures();
  if (std::find(supported.begin(), supported.end(), m.architecture) == supported.end()) {
    std::string list;
    for (const auto& a : supported) {
      list += (list.empty() ? "" : ", ") + a;
    }
    return Error(Reason::UnsupportedArchitecture,
                 "architecture " + m.architecture + " is not supported (supported: " + list + ")");
  }
  if (config.contains("quantization_config")) {
    return Error(Reason::UnsupportedArchitecture,
                 m.architecture + " checkpoint is quantized; only unquantized checkpoints shard");
  }
  if (auto it = config.find("model_type"); it != config.end() && it->is_string()) {
    m.model_type = it->get<std::string>();
  }
  if (auto it = config.find("torch_dtype"); it != config.end() && it->is_string()) {
    m.torch_dtype = it->get<std::string>();
  } else if (auto d = config.find("dtype"); d != config.end() && d->is_string()) {
    m.torch_dtype = d->get<std::string>();
  }
  auto hidden = IntField(config, "hidden_size", std::nullopt);
  if (!hidden) {
    return hidden.error();
  }
  auto inter = IntField(config, "intermediate_size", std::nullopt);
  if (!inter) {
    return inter.error();
  }
  auto layers = IntField(config, "num_hidden_layers", std::nullopt);
  if (!layers) {
    return layers.error();
  }
  auto heads = IntField(config, "num_attention_heads", std::nullopt);
  if (!heads) {
    return heads.error();
  }
  auto kv = IntField(config, "num_key_value_heads", *heads);
  if (!kv) {
    return kv.error();
  }
  auto vocab = IntField(config, "vocab_size", std::nullopt);
  if (!vocab) {
    return vocab.error();
  }
  m.hidden_size = *hidden;
  m.intermediate_size = *inter;
  m.num_layers = *layers;
  m.num_heads = *heads;
  m.num_kv_heads = *kv;
  m.vocab_size = *vocab;
  // head_dim: explicit in Qwen3, Mistral-Nemo and Llama 3.x configs; otherwise hidden / heads, as
  // the engines compute it.
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
  m.tie_word_embeddings = BoolField(config, "tie_word_embeddings");
  if (m.architecture == "Qwen2ForCausalLM") {
    m.qkv_bias = true;  // Qwen2Attention: QKVParallelLinear(bias=True), o_proj bias=False
  } else if (m.architecture == "Qwen3ForCausalLM") {
    m.qkv_bias = BoolField(config, "attention_bias");
    m.qk_norm = true;
  } else {
    // LlamaDecoderLayer: bias = attention_bias or bias (internlm), on qkv_proj and o_proj alike,
    // except that a qkv_bias field (internlm3) overrides it for qkv_proj in vllm.
    m.o_proj_bias = BoolField(config, "attention_bias") || BoolField(config, "bias");
    m.qkv_bias = config.contains("qkv_bias") ? BoolField(config, "qkv_bias") : m.o_proj_bias;
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
  const std::string tps = std::to_string(tp);
  if (m.num_heads % tp != 0) {
    return Invalid("num_attention_heads " + std::to_string(m.num_heads) +
                   " is not divisible by tensorParallelSize " + tps);
  }
  if (tp >= m.num_kv_heads ? tp % m.num_kv_heads != 0 : m.num_kv_heads % tp != 0) {
    return Invalid("num_key_value_heads " + std::to_string(m.num_kv_heads) +
                   " and tensorParallelSize " + tps +
                   ": one must divide the other (KV heads are split or replicated evenly)");
  }
  if (m.intermediate_size % tp != 0) {
    return Invalid("intermediate_size " + std::to_string(m.intermediate_size) +
                   " is not divisible by tensorParallelSize " + tps);
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

  const int64_t hidden = m.hidden_size;
  const int64_t head_dim = m.head_dim;
  const int64_t q_rows = m.num_heads / tp * head_dim;
  const int64_t kv_heads = std::max<int64_t>(1, m.num_kv_heads / tp);
  const int64_t kv_rows = kv_heads * head_dim;
  const int64_t replicas = tp >= m.num_kv_heads ? tp / m.num_kv_heads : 1;
  const int64_t inter = m.intermediate_size / tp;
  const int64_t vocab_rows = plan.padded_vocab / tp;
  const int64_t attn_in = m.num_heads * head_dim / tp;

  auto& src = plan.sources;
  src["model.embed_tokens.weight"] = {m.vocab_size, hidden};
  if (!m.tie_word_embeddings) {
    src["lm_head.weight"] = {m.vocab_size, hidden};
  }
  src["model.norm.weight"] = {hidden};
  for (int64_t i = 0; i < m.num_layers; ++i) {
    const std::string l = Layer(i);
    src[l + "self_attn.q_proj.weight"] = {m.num_heads * head_dim, hidden};
    src[l + "self_attn.k_proj.weight"] = {m.num_kv_heads * head_dim, hidden};
    src[l + "self_attn.v_proj.weight"] = {m.num_kv_heads * head_dim, hidden};
    if (m.qkv_bias) {
      src[l + "self_attn.q_proj.bias"] = {m.num_heads * head_dim};
      src[l + "self_attn.k_proj.bias"] = {m.num_kv_heads * head_dim};
      src[l + "self_attn.v_proj.bias"] = {m.num_kv_heads * head_dim};
    }
    src[l + "self_attn.o_proj.weight"] = {hidden, m.num_heads * head_dim};
    if (m.o_proj_bias) {
      src[l + "self_attn.o_proj.bias"] = {hidden};
    }
    if (m.qk_norm) {
      src[l + "self_attn.q_norm.weight"] = {head_dim};
      src[l + "self_attn.k_norm.weight"] = {head_dim};
    }
    src[l + "mlp.gate_proj.weight"] = {m.intermediate_size, hidden};
    src[l + "mlp.up_proj.weight"] = {m.intermediate_size, hidden};
    src[l + "mlp.down_proj.weight"] = {hidden, m.intermediate_size};
    src[l + "input_layernorm.weight"] = {hidden};
    src[l + "post_attention_layernorm.weight"] = {hidden};
  }

  // The rows of vocab-parallel rank r: real rows [start, end) of the checkpoint, then zeros.
  auto vocab_tensor = [&](const std::string& name, const std::string& source, int64_t r) {
    RankTensor t{name, {vocab_rows, hidden}, std::nullopt, {}};
    int64_t start = std::min(r * vocab_rows, m.vocab_size);
    int64_t end = std::min((r + 1) * vocab_rows, m.vocab_size);
    if (end > start) {
      t.pieces.push_back(Copy(source, start, end - start));
    }
    if (vocab_rows > end - start) {
      t.pieces.push_back(Zeros(vocab_rows - (end - start)));
    }
    return t;
  };
  auto replicated = [&](const std::string& name, const std::string& source, int64_t n) {
    return RankTensor{name, {n}, std::nullopt, {Copy(source, 0, n)}};
  };

  plan.ranks.resize(static_cast<size_t>(tp));
  for (int64_t r = 0; r < tp; ++r) {
    auto& out = plan.ranks[static_cast<size_t>(r)];
    const int64_t kv_index = r / replicas;
    out.push_back(
        vocab_tensor(m.tie_word_embeddings ? "lm_head.weight" : "model.embed_tokens.weight",
                     "model.embed_tokens.weight", r));
    for (int64_t i = 0; i < m.num_layers; ++i) {
      const std::string l = Layer(i);
      const std::string a = l + "self_attn.";
      RankTensor qkv{a + "qkv_proj.weight", {q_rows + 2 * kv_rows, hidden}, std::nullopt, {}};
      qkv.pieces = {Copy(a + "q_proj.weight", r * q_rows, q_rows),
                    Copy(a + "k_proj.weight", kv_index * kv_rows, kv_rows),
                    Copy(a + "v_proj.weight", kv_index * kv_rows, kv_rows)};
      out.push_back(std::move(qkv));
      if (m.qkv_bias) {
        RankTensor bias{a + "qkv_proj.bias", {q_rows + 2 * kv_rows}, std::nullopt, {}};
        bias.pieces = {Copy(a + "q_proj.bias", r * q_rows, q_rows),
                       Copy(a + "k_proj.bias", kv_index * kv_rows, kv_rows),
                       Copy(a + "v_proj.bias", kv_index * kv_rows, kv_rows)};
        out.push_back(std::move(bias));
      }
      out.push_back(RankTensor{a + "o_proj.weight",
                               {hidden, attn_in},
                               std::nullopt,
                               {Copy(a + "o_proj.weight", 0, hidden, r * attn_in)}});
      if (m.o_proj_bias) {
        out.push_back(replicated(a + "o_proj.bias", a + "o_proj.bias", hidden));
      }
      if (layout.attention_scale_buffers) {
        for (const auto& buffer : AttentionScaleBufferNames()) {
          Piece one;
          one.kind = Piece::Kind::Ones;
          one.rows = 1;
          std::string name = a;
          name.append("attn.").append(buffer);
          out.push_back(RankTensor{std::move(name), {}, DType::F32, {one}});
        }
      }
      if (m.qk_norm) {
        out.push_back(replicated(a + "q_norm.weight", a + "q_norm.weight", head_dim));
        out.push_back(replicated(a + "k_norm.weight", a + "k_norm.weight", head_dim));
      }
      RankTensor gate_up{l + "mlp.gate_up_proj.weight", {2 * inter, hidden}, std::nullopt, {}};
      gate_up.pieces = {Copy(l + "mlp.gate_proj.weight", r * inter, inter),
                        Copy(l + "mlp.up_proj.weight", r * inter, inter)};
      out.push_back(std::move(gate_up));
      out.push_back(RankTensor{l + "mlp.down_proj.weight",
                               {hidden, inter},
                               std::nullopt,
                               {Copy(l + "mlp.down_proj.weight", 0, hidden, r * inter)}});
      out.push_back(replicated(l + "input_layernorm.weight", l + "input_layernorm.weight", hidden));
      out.push_back(replicated(l + "post_attention_layernorm.weight",
                               l + "post_attention_layernorm.weight", hidden));
    }
    out.push_back(replicated("model.norm.weight", "model.norm.weight", hidden));
    if (!m.tie_word_embeddings) {
      out.push_back(vocab_tensor("lm_head.weight", "lm_head.weight", r));
    }
  }
  return plan;
}

}  // namespace modelcache::shard
