#include "model/config.h"

#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "base/file_read.h"

namespace epwa {
namespace {

using nlohmann::json;

// One family: which config.json fields it reads and which kind it uses for
// each concern. Defaults are those of the family's configuration_*.py in
// transformers, used when a field is absent.
enum class BiasRule {
  kNone,            // no attention biases (Mixtral, Mistral)
  kQkv,             // q/k/v biases always (Qwen2)
  kQkvField,        // q/k/v biases unless `qkv_bias` is false (Qwen2-MoE)
  kAttentionField,  // q/k/v/o biases iff `attention_bias` (Llama, Qwen3, OLMoE, Granite)
  kAttentionFieldOn,  // q/k/v/o biases unless `attention_bias` is false (gpt-oss)
};
enum class WindowRule {
  kNone,               // no sliding window field
  kAlways,             // `sliding_window` applies to every layer when set (Mistral, Mixtral)
  kFlagAllLayers,      // ... only when `use_sliding_window` (Qwen3-MoE: every layer)
  kFlagFromMaxLayers,  // ... only when `use_sliding_window`, from max_window_layers on (Qwen2, Qwen3)
  kLayerTypes,         // ... on the layers `layer_types` marks "sliding_attention" (gpt-oss;
                       // default: even layers)
};

struct ArchitectureSpec {
  const char* name;
  const char* model_type;
  bool moe;
  const char* experts_field;      // MoE: "num_local_experts" or "num_experts"
  const char* expert_ff_field;    // MoE: "intermediate_size" or "moe_intermediate_size"
  bool reads_norm_topk_prob;      // false: always renormalised (Mixtral)
  bool norm_topk_prob_default;
  bool layer_schedule;            // mlp_only_layers and decoder_sparse_step
  RouterKind router;
  ExpertLayout expert_layout;
  SharedExpertKind shared_expert;
  QkNormKind qk_norm;
  BiasRule bias;
  WindowRule window;
  bool clip_qkv;                  // reads clip_qkv
  bool multipliers;               // Granite's embedding/residual/attention/logits multipliers
  // The rest defaults for the families that predate them.
  bool router_bias = false;       // mlp.router.bias
  bool expert_bias = false;       // routed experts' biases
  bool sinks = false;             // self_attn.sinks
  ActivationKind activation = ActivationKind::kSwiGLU;
  // The quantization_config quant_method the family's checkpoints may carry
  // (nullptr: none, and a config.json that has one is refused).
  const char* quant_method = nullptr;
  NormKind norm = NormKind::kRms;
  bool lm_head_bias = false;      // reads lm_head_bias
  // DeepSeek: multi-head latent attention, adjacent-pair rotary, dense
  // layers below first_k_dense_replace, and the group routers' fields.
  AttentionKind attention = AttentionKind::kMultiHead;
};

constexpr ArchitectureSpec kArchitectures[] = {
    {"MixtralForCausalLM", "mixtral", true, "num_local_experts", "intermediate_size", false, true,
     false, RouterKind::kSoftmaxTopK, ExpertLayout::kMixtral, SharedExpertKind::kNone,
     QkNormKind::kNone, BiasRule::kNone, WindowRule::kAlways, false, false},
    {"LlamaForCausalLM", "llama", false, nullptr, nullptr, false, true, false,
     RouterKind::kSoftmaxTopK, ExpertLayout::kMixtral, SharedExpertKind::kNone, QkNormKind::kNone,
     BiasRule::kAttentionField, WindowRule::kNone, false, false},
    {"MistralForCausalLM", "mistral", false, nullptr, nullptr, false, true, false,
     RouterKind::kSoftmaxTopK, ExpertLayout::kMixtral, SharedExpertKind::kNone, QkNormKind::kNone,
     BiasRule::kNone, WindowRule::kAlways, false, false},
    {"Qwen2ForCausalLM", "qwen2", false, nullptr, nullptr, false, true, false,
     RouterKind::kSoftmaxTopK, ExpertLayout::kMixtral, SharedExpertKind::kNone, QkNormKind::kNone,
     BiasRule::kQkv, WindowRule::kFlagFromMaxLayers, false, false},
    {"Qwen3ForCausalLM", "qwen3", false, nullptr, nullptr, false, true, false,
     RouterKind::kSoftmaxTopK, ExpertLayout::kPerExpert, SharedExpertKind::kNone,
     QkNormKind::kPerHead, BiasRule::kAttentionField, WindowRule::kFlagFromMaxLayers, false,
     false},
    {"Qwen3MoeForCausalLM", "qwen3_moe", true, "num_experts", "moe_intermediate_size", true, false,
     true, RouterKind::kSoftmaxTopK, ExpertLayout::kPerExpert, SharedExpertKind::kNone,
     QkNormKind::kPerHead, BiasRule::kAttentionField, WindowRule::kFlagAllLayers, false, false},
    {"OlmoeForCausalLM", "olmoe", true, "num_experts", "intermediate_size", true, false, false,
     RouterKind::kSoftmaxTopK, ExpertLayout::kPerExpert, SharedExpertKind::kNone,
     QkNormKind::kWholeProjection, BiasRule::kAttentionField, WindowRule::kNone, true, false},
    {"Qwen2MoeForCausalLM", "qwen2_moe", true, "num_experts", "moe_intermediate_size", true, false,
     true, RouterKind::kSoftmaxTopK, ExpertLayout::kPerExpert, SharedExpertKind::kSigmoidGated,
     QkNormKind::kNone, BiasRule::kQkvField, WindowRule::kFlagFromMaxLayers, false, false},
    {"GraniteMoeForCausalLM", "granitemoe", true, "num_local_experts", "intermediate_size", false,
     true, false, RouterKind::kTopKSoftmax, ExpertLayout::kFused, SharedExpertKind::kNone,
     QkNormKind::kNone, BiasRule::kAttentionField, WindowRule::kNone, false, true},
    {"GptOssForCausalLM", "gpt_oss", true, "num_local_experts", "intermediate_size", false, true,
     false, RouterKind::kTopKSoftmax, ExpertLayout::kMxfp4Interleaved, SharedExpertKind::kNone,
     QkNormKind::kNone, BiasRule::kAttentionFieldOn, WindowRule::kLayerTypes, false, false,
     /*router_bias=*/true, /*expert_bias=*/true, /*sinks=*/true, ActivationKind::kClampedSwiGLU,
     /*quant_method=*/"mxfp4"},
    // Phi-3.5-MoE: transformers' class is PhimoeForCausalLM; the published
    // config.json says PhiMoEForCausalLM. Both name the same family.
    {"PhimoeForCausalLM", "phimoe", true, "num_local_experts", "intermediate_size", false, false,
     false, RouterKind::kSparseMixer, ExpertLayout::kMixtral, SharedExpertKind::kNone,
     QkNormKind::kNone, BiasRule::kAttentionField, WindowRule::kAlways, false, false, false, false,
     false, ActivationKind::kSwiGLU, nullptr, NormKind::kLayerNorm, /*lm_head_bias=*/true},
    {"DeepseekV2ForCausalLM", "deepseek_v2", true, "n_routed_experts", "moe_intermediate_size", true,
     false, false, RouterKind::kGroupSoftmax, ExpertLayout::kPerExpert, SharedExpertKind::kUngated,
     QkNormKind::kNone, BiasRule::kAttentionField, WindowRule::kNone, false, false, false, false,
     false, ActivationKind::kSwiGLU, "fp8", NormKind::kRms, false, AttentionKind::kLatent},
    {"DeepseekV3ForCausalLM", "deepseek_v3", true, "n_routed_experts", "moe_intermediate_size", true,
     true, false, RouterKind::kGroupSigmoid, ExpertLayout::kPerExpert, SharedExpertKind::kUngated,
     QkNormKind::kNone, BiasRule::kAttentionField, WindowRule::kNone, false, false, false, false,
     false, ActivationKind::kSwiGLU, "fp8", NormKind::kRms, false, AttentionKind::kLatent},
    {"PhiMoEForCausalLM", "phimoe", true, "num_local_experts", "intermediate_size", false, false,
     false, RouterKind::kSparseMixer, ExpertLayout::kMixtral, SharedExpertKind::kNone,
     QkNormKind::kNone, BiasRule::kAttentionField, WindowRule::kAlways, false, false, false, false,
     false, ActivationKind::kSwiGLU, nullptr, NormKind::kLayerNorm, /*lm_head_bias=*/true},
};


const ArchitectureSpec* FindArchitecture(const std::string& name) {
  for (const auto& a : kArchitectures)
    if (name == a.name) return &a;
  return nullptr;
}

std::string JoinSupported() {
  std::string s;
  for (const auto& a : kArchitectures) {
    if (!s.empty()) s += ", ";
    s += a.name;
  }
  return s;
}

// Every size field is held to this bound before anything is allocated: far
// above any real model (the largest vocabularies are ~10^6, hidden sizes
// ~10^4-10^5). Products of fields are bounded separately (kMaxParameters).
constexpr int64_t kMaxSizeField = int64_t{1} << 40;

class Fields {
 public:
  Fields(const json& j, const std::string& origin) : j_(j), origin_(origin) {}

  bool Has(const char* key) const { return j_.contains(key) && !j_[key].is_null(); }

  int64_t Int(const char* key, int64_t min_value) const {
    Require(Has(key), origin_ + ": required field '" + key + "' is missing");
    return IntValue(key, min_value);
  }
  int64_t IntOr(const char* key, int64_t fallback, int64_t min_value) const {
    return Has(key) ? IntValue(key, min_value) : fallback;
  }
  // A finite number. JSON itself has no NaN or infinity, but a literal such
  // as 1e400 parses to infinity, and NaN/Infinity written by Python's json
  // module are refused by the parser already.
  double Number(const char* key, double fallback) const {
    if (!Has(key)) return fallback;
    Require(j_[key].is_number(), origin_ + ": field '" + key + "' must be a number");
    const double v = j_[key].get<double>();
    Require(std::isfinite(v), origin_ + ": field '" + key + "' must be a finite number");
    return v;
  }
  bool Bool(const char* key, bool fallback) const {
    if (!Has(key)) return fallback;
    Require(j_[key].is_boolean(), origin_ + ": field '" + key + "' must be true or false");
    return j_[key].get<bool>();
  }

 private:
  int64_t IntValue(const char* key, int64_t min_value) const {
    const json& v = j_[key];
    Require(v.is_number_integer(), origin_ + ": field '" + key + "' must be an integer");
    // nlohmann keeps integers above INT64_MAX as unsigned; reading those as
    // int64 would wrap 2^64-1 round to -1 and report the wrong value.
    if (v.is_number_unsigned()) {
      const uint64_t u = v.get<uint64_t>();
      Require(u <= static_cast<uint64_t>(kMaxSizeField),
              origin_ + ": field '" + key + "' is " + std::to_string(u) +
                  ", which is too large (at most " + std::to_string(kMaxSizeField) + ")");
      return CheckMin(key, static_cast<int64_t>(u), min_value);
    }
    const int64_t x = v.get<int64_t>();
    // Guard every size against absurd values before anything is allocated.
    Require(x <= kMaxSizeField, origin_ + ": field '" + key + "' is " + std::to_string(x) +
                                    ", which is too large (at most " +
                                    std::to_string(kMaxSizeField) + ")");
    return CheckMin(key, x, min_value);
  }
  int64_t CheckMin(const char* key, int64_t x, int64_t min_value) const {
    Require(x >= min_value, origin_ + ": field '" + key + "' is " + std::to_string(x) +
                                ", must be at least " + std::to_string(min_value));
    return x;
  }
  const json& j_;
  const std::string& origin_;
};

// A token id or a list of them, each an integer in [0, vocab_size). The
// value is judged before any narrowing, so 2^33 is reported as 2^33, not as
// the id its low 32 bits would make.
std::vector<int32_t> TokenIdList(const json& v, const std::string& origin, const char* key,
                                 int64_t vocab_size) {
  std::vector<int32_t> ids;
  if (v.is_null()) return ids;
  auto add = [&](const json& x) {
    Require(x.is_number_integer(),
            origin + ": field '" + key + "' must be a token id or a list of token ids, not " +
                x.dump(-1, ' ', false, json::error_handler_t::replace));
    const bool negative = x.is_number_integer() && !x.is_number_unsigned() && x.get<int64_t>() < 0;
    const std::string text = x.dump();
    Require(!negative && x.get<uint64_t>() < static_cast<uint64_t>(vocab_size),
            origin + ": field '" + key + "' has token id " + text +
                ", which is outside the vocabulary (vocab_size " + std::to_string(vocab_size) +
                ")");
    ids.push_back(static_cast<int32_t>(x.get<int64_t>()));
  };
  if (v.is_array()) {
    for (const auto& x : v) add(x);
  } else {
    add(v);
  }
  return ids;
}

// Total parameters the config describes, in double so that absurd sizes
// cannot overflow while they are being judged.
// The bound on that count: 2^50 (10^15) is ~1000x the largest released model,
// and keeps every product of sizes that later code forms in int64 (rows x
// columns of a matrix, layers x experts x elements) far from overflowing.
constexpr double kMaxParameters = 1125899906842624.0;  // 2^50

double ParameterCount(const ModelConfig& c) {
  const double D = static_cast<double>(c.hidden_size);
  const double attention = D * static_cast<double>(c.QDim()) * 2 + D * static_cast<double>(c.KvDim()) * 2;
  const double dense = 3 * D * static_cast<double>(c.intermediate_size);
  const double moe = static_cast<double>(c.num_experts) * (3 * D * static_cast<double>(c.ExpertFf()) + D) +
                     3 * D * static_cast<double>(c.shared_expert_intermediate_size) + D;
  double layers = 0;
  for (int64_t l = 0; l < c.num_layers; ++l) layers += attention + (c.IsMoeLayer(l) ? moe : dense);
  return static_cast<double>(c.vocab_size) * D * 2 + layers;
}

// A positive float32 read from config.json (epsilons and multipliers).
float PositiveFloat(const Fields& f, const json& j, const char* key, double fallback,
                    const std::string& origin, const char* what) {
  const double v = f.Number(key, fallback);
  Require(v > 0 && v <= std::numeric_limits<float>::max() && static_cast<float>(v) > 0,
          origin + ": " + key + " is " + json(v).dump() + ", which is not a positive float32 value" +
              what);
  return static_cast<float>(v);
}

// Reads rope_scaling (transformers v4) or rope_parameters (v5) into
// c->rope_scaling, following transformers' modeling_rope_utils: `type` is an
// old spelling of `rope_type`; each kind's required fields must be present.
void ParseRopeScaling(const json& j, const std::string& origin, ModelConfig* c) {
  const char* key = j.contains("rope_parameters") && !j["rope_parameters"].is_null()
                        ? "rope_parameters"
                        : "rope_scaling";
  if (!j.contains(key) || j[key].is_null()) return;
  const json& rs = j[key];
  const std::string where = origin + ": " + key;
  Require(rs.is_object(), where + " must be an object");
  Fields f(rs, where);
  std::string type;
  for (const char* k : {"rope_type", "type"}) {
    if (!f.Has(k)) continue;
    Require(rs[k].is_string(), where + "." + k + " must be a string");
    const std::string t = rs[k].get<std::string>();
    Require(type.empty() || type == t, where + " has rope_type '" + type + "' and type '" + t +
                                           "', which disagree");
    type = t;
  }
  Require(!type.empty(), where + " has no 'rope_type' (or 'type') field");
  if (rs.contains("rope_theta")) {
    c->rope_theta = f.Number("rope_theta", c->rope_theta);
    Require(c->rope_theta > 1.0, where + ".rope_theta must be greater than 1");
  }
  RopeScaling& r = c->rope_scaling;
  auto factor = [&](bool required) {
    Require(!required || f.Has("factor"), where + ": rope_type '" + type + "' needs the field 'factor'");
    r.factor = f.Number("factor", r.factor);
    // Released models use 4 to 64; the upper bound keeps the context limit
    // (max_position_embeddings x factor for dynamic scaling) far from overflow.
    Require(r.factor >= 1.0 && r.factor <= 4096.0,
            where + ".factor is " + json(r.factor).dump() + ", must be between 1 and 4096");
  };
  if (type == "default") {
    r.kind = RopeScalingKind::kDefault;
  } else if (type == "linear") {
    r.kind = RopeScalingKind::kLinear;
    factor(true);
  } else if (type == "dynamic") {
    r.kind = RopeScalingKind::kDynamic;
    factor(true);
  } else if (type == "llama3") {
    r.kind = RopeScalingKind::kLlama3;
    factor(true);
    for (const char* k : {"low_freq_factor", "high_freq_factor", "original_max_position_embeddings"})
      Require(f.Has(k), where + ": rope_type 'llama3' needs the field '" + k + "'");
    r.low_freq_factor = f.Number("low_freq_factor", 1.0);
    r.high_freq_factor = f.Number("high_freq_factor", 4.0);
    Require(r.low_freq_factor > 0 && r.high_freq_factor > r.low_freq_factor && r.high_freq_factor < 1e6,
            where + ": high_freq_factor must be greater than low_freq_factor, and both positive");
    r.original_max_position_embeddings = f.Int("original_max_position_embeddings", 1);
  } else if (type == "yarn") {
    r.kind = RopeScalingKind::kYarn;
    r.original_max_position_embeddings =
        f.IntOr("original_max_position_embeddings", c->max_position_embeddings, 1);
    if (f.Has("factor")) {
      factor(true);
    } else {
      // transformers derives the factor from the two context lengths when it is absent.
      r.factor = static_cast<double>(c->max_position_embeddings) /
                 static_cast<double>(r.original_max_position_embeddings);
      Require(r.factor >= 1.0 && r.factor <= 4096.0,
              where + ": rope_type 'yarn' needs the field 'factor'");
    }
    r.beta_fast = f.Number("beta_fast", 32.0);
    r.beta_slow = f.Number("beta_slow", 1.0);
    Require(r.beta_fast > 0 && r.beta_slow > 0 && r.beta_fast > r.beta_slow && r.beta_fast < 1e6,
            where + ": beta_fast must be greater than beta_slow, and both positive");
    r.truncate = f.Bool("truncate", true);
    // mscale(s, m) = 0.1 m ln(s) + 1 (1 for s <= 1), the YaRN paper's attention temperature.
    auto mscale = [&](double m) { return r.factor <= 1 ? 1.0 : 0.1 * m * std::log(r.factor) + 1.0; };
    if (f.Has("attention_factor")) {
      r.attention_factor = f.Number("attention_factor", 1.0);
      Require(r.attention_factor > 0 && r.attention_factor <= 100,
              where + ".attention_factor must be positive (and at most 100)");
    } else {
      const double m = f.Number("mscale", 0.0), m_all = f.Number("mscale_all_dim", 0.0);
      r.attention_factor = (m != 0 && m_all != 0) ? mscale(m) / mscale(m_all) : mscale(1.0);
    }
    r.mscale = f.Number("mscale", 0.0);
    r.mscale_all_dim = f.Number("mscale_all_dim", 0.0);
    Require(std::abs(r.mscale) <= 100 && std::abs(r.mscale_all_dim) <= 100,
            where + ": mscale and mscale_all_dim must be at most 100");
  } else if (type == "longrope") {
    // Phi-3 / Phi-3.5 (transformers' _compute_longrope_parameters): one
    // divisor per frequency pair for short calls and one for long ones.
    r.kind = RopeScalingKind::kLongRope;
    const int64_t half = c->head_dim / 2;
    auto factors = [&](const char* key) {
      Require(f.Has(key) && rs[key].is_array() && static_cast<int64_t>(rs[key].size()) == half,
              where + ": rope_type 'longrope' needs '" + key + "', a list of head_dim / 2 = " +
                  std::to_string(half) + " numbers");
      std::vector<double> out;
      for (const json& v : rs[key]) {
        Require(v.is_number() && std::isfinite(v.get<double>()) && v.get<double>() > 0,
                where + "." + key + " holds " + v.dump(-1, ' ', false, json::error_handler_t::replace) +
                    ", which is not a positive number");
        out.push_back(v.get<double>());
      }
      return out;
    };
    r.short_factor = factors("short_factor");
    r.long_factor = factors("long_factor");
    // Phi-3 keeps original_max_position_embeddings at the top level of config.json.
    Fields top(j, origin);
    r.original_max_position_embeddings =
        f.IntOr("original_max_position_embeddings",
                top.IntOr("original_max_position_embeddings", c->max_position_embeddings, 1), 1);
    r.factor = f.Has("factor") ? f.Number("factor", 1.0)
                               : static_cast<double>(c->max_position_embeddings) /
                                     static_cast<double>(r.original_max_position_embeddings);
    Require(r.factor > 0 && r.factor <= 4096.0, where + ".factor must be positive (and at most 4096)");
    double att = r.factor <= 1.0 ? 1.0
                                 : std::sqrt(1.0 + std::log(r.factor) /
                                                       std::log(static_cast<double>(r.original_max_position_embeddings)));
    if (f.Has("attention_factor")) att = f.Number("attention_factor", att);
    // Phi-3.5-MoE's short_mscale / long_mscale replace that factor.
    r.short_mscale = f.Number("short_mscale", att);
    r.long_mscale = f.Number("long_mscale", att);
    Require(r.short_mscale > 0 && r.short_mscale <= 100 && r.long_mscale > 0 && r.long_mscale <= 100,
            where + ": short_mscale and long_mscale must be positive (and at most 100)");
    r.attention_factor = r.short_mscale;
  } else {
    throw Error(where + " type '" + type +
                "' is not supported (supported: default, linear, dynamic, llama3, yarn, longrope)");
  }
}

// A list of layer indices such as mlp_only_layers, each in [0, layers).
std::vector<int32_t> LayerList(const json& j, const char* key, int64_t layers,
                               const std::string& origin) {
  std::vector<int32_t> out;
  if (!j.contains(key) || j[key].is_null()) return out;
  Require(j[key].is_array(), origin + ": field '" + key + "' must be a list of layer indices");
  for (const json& v : j[key]) {
    Require(v.is_number_integer() && v.get<int64_t>() >= 0 && v.get<int64_t>() < layers,
            origin + ": field '" + key + "' holds " +
                v.dump(-1, ' ', false, json::error_handler_t::replace) +
                ", which is not a layer index below num_hidden_layers (" + std::to_string(layers) + ")");
    out.push_back(static_cast<int32_t>(v.get<int64_t>()));
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

}  // namespace

const char* QkNormKindName(QkNormKind kind) {
  switch (kind) {
    case QkNormKind::kNone: return "none";
    case QkNormKind::kPerHead: return "per-head RMSNorm";
    case QkNormKind::kWholeProjection: return "whole-projection RMSNorm";
  }
  return "?";
}

const char* RouterKindName(RouterKind kind) {
  switch (kind) {
    case RouterKind::kSoftmaxTopK: return "softmax, top-k";
    case RouterKind::kTopKSoftmax: return "top-k, softmax over k";
    case RouterKind::kSparseMixer: return "sparsemixer top-2";
    case RouterKind::kGroupSoftmax: return "softmax, group-limited top-k, scaled";
    case RouterKind::kGroupSigmoid: return "sigmoid + correction bias, group-limited top-k, scaled";
  }
  return "?";
}

const char* NormKindName(NormKind kind) {
  switch (kind) {
    case NormKind::kRms: return "RMSNorm";
    case NormKind::kLayerNorm: return "LayerNorm";
  }
  return "?";
}

const char* ActivationKindName(ActivationKind kind) {
  switch (kind) {
    case ActivationKind::kSwiGLU: return "SwiGLU";
    case ActivationKind::kClampedSwiGLU: return "clamped SwiGLU";
  }
  return "?";
}

const char* RopeScalingKindName(RopeScalingKind kind) {
  switch (kind) {
    case RopeScalingKind::kDefault: return "default";
    case RopeScalingKind::kLinear: return "linear";
    case RopeScalingKind::kDynamic: return "dynamic";
    case RopeScalingKind::kLlama3: return "llama3";
    case RopeScalingKind::kYarn: return "yarn";
    case RopeScalingKind::kLongRope: return "longrope";
  }
  return "?";
}

std::vector<std::string> SupportedArchitectures() {
  std::vector<std::string> names;
  for (const auto& a : kArchitectures) names.push_back(a.name);
  return names;
}

ModelConfig ParseModelConfig(const std::string& json_text, const std::string& origin) {
  json j;
  try {
    j = json::parse(json_text);
  } catch (const json::exception& e) {
    // parse_error, and out_of_range for numbers such as 1e400.
    throw Error(origin + ": malformed JSON (" + std::string(e.what()) + ")");
  }
  Require(j.is_object(), origin + ": expected a JSON object");
  Require(j.contains("architectures") && j["architectures"].is_array() &&
              !j["architectures"].empty() && j["architectures"][0].is_string(),
          origin + ": field 'architectures' is missing (expected e.g. [\"MixtralForCausalLM\"])");
  ModelConfig c;
  c.architecture = j["architectures"][0].get<std::string>();
  const ArchitectureSpec* arch = FindArchitecture(c.architecture);
  Require(arch != nullptr, origin + ": architecture '" + c.architecture +
                               "' is not supported (supported: " + JoinSupported() + ")");
  c.model_type = arch->model_type;

  Fields f(j, origin);
  c.vocab_size = f.Int("vocab_size", 1);
  c.hidden_size = f.Int("hidden_size", 1);
  c.intermediate_size = f.Int("intermediate_size", 1);
  c.num_layers = f.Int("num_hidden_layers", 1);
  c.num_heads = f.Int("num_attention_heads", 1);
  c.num_kv_heads = f.IntOr("num_key_value_heads", c.num_heads, 1);
  Require(c.num_heads % c.num_kv_heads == 0,
          origin + ": num_attention_heads (" + std::to_string(c.num_heads) +
              ") must be a multiple of num_key_value_heads (" + std::to_string(c.num_kv_heads) +
              ")");
  if (f.Has("head_dim")) {
    c.head_dim = f.Int("head_dim", 2);
  } else {
    Require(c.hidden_size % c.num_heads == 0,
            origin + ": hidden_size (" + std::to_string(c.hidden_size) +
                ") is not divisible by num_attention_heads (" + std::to_string(c.num_heads) + ")");
    c.head_dim = c.hidden_size / c.num_heads;
  }
  c.attention = arch->attention;
  if (c.Latent()) {
    // DeepSeek MLA: the rotary part of each head is qk_rope_head_dim wide, and
    // that is what head_dim means for the rotary code (as in transformers).
    c.q_lora_rank = f.Has("q_lora_rank") ? f.Int("q_lora_rank", 1) : 0;
    c.kv_lora_rank = f.Int("kv_lora_rank", 1);
    c.qk_nope_head_dim = f.Int("qk_nope_head_dim", 1);
    c.head_dim = f.Int("qk_rope_head_dim", 2);
    c.v_head_dim = f.Int("v_head_dim", 1);
    // V2 always rotates adjacent pairs; V3 unless rope_interleave is false.
    c.rope_pairing = f.Bool("rope_interleave", true) ? RopePairing::kAdjacent : RopePairing::kHalves;
  }
  Require(c.head_dim % 2 == 0, origin + ": head_dim must be even for rotary embeddings");
  c.max_position_embeddings = f.IntOr("max_position_embeddings", 4096, 1);
  // The forward pass computes in float32, so the epsilon must be a positive
  // float32: 1e300 would become infinity (every activation 0) and 1e-50 zero.
  c.rms_norm_eps = PositiveFloat(f, j, "rms_norm_eps", 1e-6, origin, " (real models use ~1e-5 or 1e-6)");
  c.rope_theta = f.Number("rope_theta", 10000.0);
  Require(c.rope_theta > 1.0, origin + ": rope_theta is " + json(c.rope_theta).dump() +
                                  ", must be greater than 1");
  // Every supported architecture uses SwiGLU; HF maps both "silu" and
  // "swish" to the same function. Any other activation (gelu, relu, ...)
  // would silently compute a different model, so it is refused.
  if (f.Has("hidden_act")) {
    const json& act = j["hidden_act"];
    Require(act.is_string() && (act.get<std::string>() == "silu" || act.get<std::string>() == "swish"),
            origin + ": hidden_act " + act.dump(-1, ' ', false, json::error_handler_t::replace) +
                " is not supported (supported: \"silu\", also spelt \"swish\")");
  }
  // A partial rotary embedding rotates only part of each head; no supported
  // family uses one, and ignoring it would rotate the wrong dimensions.
  if (f.Has("partial_rotary_factor"))
    Require(f.Number("partial_rotary_factor", 1.0) == 1.0,
            origin + ": partial_rotary_factor other than 1 is not supported");
  ParseRopeScaling(j, origin, &c);
  if (c.Latent()) {
    // Softmax scale (qk_nope + qk_rope)^-0.5, times m^2 under yarn with
    // mscale_all_dim (m = 0.1 mscale_all_dim ln(factor) + 1), as DeepSeek's
    // own code, vLLM and llama.cpp do (transformers' V2 port added it in 2026).
    double scale = 1.0 / std::sqrt(static_cast<double>(c.qk_nope_head_dim + c.head_dim));
    const double m_all = c.rope_scaling.mscale_all_dim;
    if (c.rope_scaling.kind == RopeScalingKind::kYarn && m_all != 0 && c.rope_scaling.factor > 1) {
      const double m = 0.1 * m_all * std::log(c.rope_scaling.factor) + 1.0;
      scale *= m * m;
    }
    c.attention_scale = static_cast<float>(scale);
  }
  c.tie_word_embeddings = f.Bool("tie_word_embeddings", false);

  switch (arch->bias) {
    case BiasRule::kNone: break;
    case BiasRule::kQkv: c.qkv_bias = true; break;
    case BiasRule::kQkvField: c.qkv_bias = f.Bool("qkv_bias", true); break;
    case BiasRule::kAttentionField: c.qkv_bias = c.o_bias = f.Bool("attention_bias", false); break;
    case BiasRule::kAttentionFieldOn: c.qkv_bias = c.o_bias = f.Bool("attention_bias", true); break;
  }
  c.attention_sinks = arch->sinks;
  c.norm = arch->norm;
  if (arch->lm_head_bias) c.lm_head_bias = f.Bool("lm_head_bias", false);
  c.activation = arch->activation;
  if (c.activation == ActivationKind::kClampedSwiGLU) {
    c.swiglu_limit = PositiveFloat(f, j, "swiglu_limit", 7.0, origin, "");
  }
  // A quantized checkpoint (quantization_config) is read only in the format
  // its family ships in; anything else would be read as if it were floats.
  if (f.Has("quantization_config")) {
    const json& q = j["quantization_config"];
    Require(q.is_object() && q.contains("quant_method") && q["quant_method"].is_string(),
            origin + ": quantization_config must be an object with a string 'quant_method'");
    const std::string method = q["quant_method"].get<std::string>();
    Require(arch->quant_method != nullptr && method == arch->quant_method,
            origin + ": quantization_config quant_method '" + method + "' is not supported for " +
                c.architecture +
                (arch->quant_method ? std::string(" (supported: ") + arch->quant_method + ")"
                                    : std::string(" (epwa reads its unquantized checkpoints)")));
    if (method == "fp8") {
      // DeepSeek-V3's FP8: e4m3 values with a float32 scale per 128 x 128 block.
      Require(!q.contains("fmt") || q["fmt"] == "e4m3",
              origin + ": quantization_config fmt must be \"e4m3\" (the only FP8 format supported)");
      Require(!q.contains("weight_block_size") || q["weight_block_size"] == json::array({128, 128}),
              origin + ": quantization_config weight_block_size must be [128, 128]");
      c.fp8_block = 128;
    }
  }
  Require(!f.Bool("mlp_bias", false),
          origin + ": mlp_bias=true is not supported (no released model of these families uses it)");
  c.qk_norm = arch->qk_norm;
  if (arch->clip_qkv && f.Has("clip_qkv")) {
    const double clip = f.Number("clip_qkv", 0.0);
    Require(clip > 0 && clip <= std::numeric_limits<float>::max(),
            origin + ": clip_qkv is " + json(clip).dump() + ", must be a positive number or null");
    c.clip_qkv = static_cast<float>(clip);
  }
  if (arch->multipliers) {
    c.embedding_multiplier = PositiveFloat(f, j, "embedding_multiplier", 1.0, origin, "");
    c.residual_multiplier = PositiveFloat(f, j, "residual_multiplier", 1.0, origin, "");
    c.attention_scale = PositiveFloat(f, j, "attention_multiplier", 1.0, origin, "");
    c.logits_scaling = PositiveFloat(f, j, "logits_scaling", 1.0, origin, "");
  }

  if (arch->window == WindowRule::kLayerTypes) {
    // gpt-oss: the window applies on the layers layer_types marks
    // "sliding_attention"; without the field transformers makes the even
    // layers sliding (GptOssConfig).
    if (f.Has("layer_types")) {
      const json& types = j["layer_types"];
      Require(types.is_array() && static_cast<int64_t>(types.size()) == c.num_layers,
              origin + ": layer_types must list one entry per layer (" +
                  std::to_string(c.num_layers) + "), not " +
                  (types.is_array() ? std::to_string(types.size()) + " entries"
                                    : std::string("a ") + types.type_name()));
      for (const json& t : types) {
        Require(t.is_string() && (t.get<std::string>() == "sliding_attention" ||
                                  t.get<std::string>() == "full_attention"),
                origin + ": layer_types holds " + t.dump(-1, ' ', false, json::error_handler_t::replace) +
                    " (each entry must be \"sliding_attention\" or \"full_attention\")");
        c.sliding_layers.push_back(t.get<std::string>() == "sliding_attention");
      }
    } else {
      for (int64_t l = 0; l < c.num_layers; ++l) c.sliding_layers.push_back(l % 2 == 0);
    }
    if (std::find(c.sliding_layers.begin(), c.sliding_layers.end(), true) != c.sliding_layers.end())
      c.sliding_window = f.Int("sliding_window", 1);
    else
      c.sliding_layers.clear();  // no layer slides
  } else if (arch->window != WindowRule::kNone && f.Has("sliding_window")) {
    // Qwen configs carry a sliding_window that is only used when
    // use_sliding_window is true; Mistral and Mixtral use it whenever set.
    const bool enabled = arch->window == WindowRule::kAlways || f.Bool("use_sliding_window", false);
    bool windowed = enabled;
    if (enabled && arch->window == WindowRule::kFlagFromMaxLayers) {
      // transformers (Qwen2, Qwen3, Qwen2-MoE): layer i slides iff i >=
      // max_window_layers (default 28), unless config.json lists layer_types.
      // A mix becomes per-layer windows, as gpt-oss's layer_types do; all-full
      // means no window at all.
      std::vector<bool> sliding;
      if (j.contains("layer_types") && j["layer_types"].is_array()) {
        const json& types = j["layer_types"];
        Require(static_cast<int64_t>(types.size()) == c.num_layers,
                origin + ": layer_types must list one entry per layer (" + std::to_string(c.num_layers) +
                    "), not " + std::to_string(types.size()) + " entries");
        for (const json& t : types) sliding.push_back(t.is_string() && t.get<std::string>() == "sliding_attention");
      } else {
        const int64_t first = f.IntOr("max_window_layers", 28, 0);
        for (int64_t l = 0; l < c.num_layers; ++l) sliding.push_back(l >= first);
      }
      const int64_t sliding_layers = std::count(sliding.begin(), sliding.end(), true);
      windowed = sliding_layers > 0;
      if (windowed && sliding_layers < c.num_layers) c.sliding_layers = std::move(sliding);
    }
    if (windowed) c.sliding_window = f.Int("sliding_window", 1);
  }
  if (arch->moe) {
    c.router = arch->router;
    c.router_bias = arch->router_bias;
    c.expert_bias = arch->expert_bias;
    c.expert_layout = arch->expert_layout;
    c.num_experts = f.Int(arch->experts_field, 1);
    // gpt-oss configs also spell it experts_per_token.
    c.num_experts_per_tok = f.Has("num_experts_per_tok") || !f.Has("experts_per_token")
                                ? f.Int("num_experts_per_tok", 1)
                                : f.Int("experts_per_token", 1);
    Require(c.num_experts_per_tok <= c.num_experts,
            origin + ": num_experts_per_tok (" + std::to_string(c.num_experts_per_tok) +
                ") exceeds " + arch->experts_field + " (" + std::to_string(c.num_experts) + ")");
    c.moe_intermediate_size = f.Int(arch->expert_ff_field, 1);
    c.norm_topk_prob = arch->reads_norm_topk_prob
                           ? f.Bool("norm_topk_prob", arch->norm_topk_prob_default)
                           : arch->norm_topk_prob_default;
    if (c.router == RouterKind::kGroupSoftmax || c.router == RouterKind::kGroupSigmoid) {
      const bool sigmoid = c.router == RouterKind::kGroupSigmoid;
      auto text_field = [&](const char* key) -> std::string {
        if (!f.Has(key)) return "";
        Require(j[key].is_string(), origin + ": field '" + key + "' must be a string");
        return j[key].get<std::string>();
      };
      const std::string scoring = text_field("scoring_func");
      Require(scoring.empty() || scoring == (sigmoid ? "sigmoid" : "softmax"),
              origin + ": scoring_func '" + scoring + "' is not supported for " + c.architecture +
                  " (supported: " + (sigmoid ? "sigmoid" : "softmax") + ")");
      const std::string method = text_field("topk_method");
      if (sigmoid) {
        Require(method.empty() || method == "noaux_tc",
                origin + ": topk_method '" + method + "' is not supported for " + c.architecture +
                    " (supported: noaux_tc)");
      } else {
        Require(method.empty() || method == "greedy" || method == "group_limited_greedy",
                origin + ": topk_method '" + method + "' is not supported for " + c.architecture +
                    " (supported: greedy, group_limited_greedy)");
      }
      const bool grouped = sigmoid || method == "group_limited_greedy";
      c.n_group = grouped ? f.IntOr("n_group", 1, 1) : 1;
      c.topk_group = grouped ? f.IntOr("topk_group", 1, 1) : 1;
      Require(c.num_experts % c.n_group == 0 && c.topk_group <= c.n_group,
              origin + ": n_group (" + std::to_string(c.n_group) + ") must divide " +
                  arch->experts_field + " (" + std::to_string(c.num_experts) +
                  ") and topk_group (" + std::to_string(c.topk_group) + ") must not exceed it");
      Require(c.num_experts_per_tok <= c.topk_group * (c.num_experts / c.n_group),
              origin + ": num_experts_per_tok (" + std::to_string(c.num_experts_per_tok) +
                  ") exceeds the experts of topk_group groups");
      c.routed_scaling_factor = PositiveFloat(f, j, "routed_scaling_factor", 1.0, origin, "");
      c.correction_bias = sigmoid;
    }
    if (c.router == RouterKind::kSparseMixer) {
      // sparsemixer's inference rule picks exactly two experts.
      Require(c.num_experts_per_tok == 2 && c.num_experts >= 2,
              origin + ": num_experts_per_tok is " + std::to_string(c.num_experts_per_tok) + " but " +
                  c.architecture + "'s sparsemixer router selects exactly 2 experts");
      const double jitter = f.Number("router_jitter_noise", 0.01);
      Require(jitter >= 0 && jitter < 1, origin + ": router_jitter_noise must be in [0, 1)");
      c.router_jitter = static_cast<float>(jitter);
    }
    if (arch->shared_expert == SharedExpertKind::kSigmoidGated) {
      c.shared_expert = arch->shared_expert;
      c.shared_expert_intermediate_size = f.Int("shared_expert_intermediate_size", 1);
    } else if (arch->shared_expert == SharedExpertKind::kUngated && f.IntOr("n_shared_experts", 0, 0) > 0) {
      // DeepSeek's shared experts are one MLP n_shared_experts times as wide.
      c.shared_expert = arch->shared_expert;
      c.shared_expert_intermediate_size = c.moe_intermediate_size * f.Int("n_shared_experts", 1);
    }
    if (c.Latent()) {
      // Layers below first_k_dense_replace are dense (transformers ignores
      // moe_layer_freq, which is 1 in every release; another value is refused).
      Require(f.IntOr("moe_layer_freq", 1, 1) == 1,
              origin + ": moe_layer_freq other than 1 is not supported");
      // A config cut to fewer layers than first_k_dense_replace (a shortened
      // DeepSeek-V3 of its dense layers only) has no MoE layer, as in transformers.
      const int64_t first = f.IntOr("first_k_dense_replace", 0, 0);
      for (int64_t l = 0; l < std::min(first, c.num_layers); ++l) c.dense_layers.push_back(static_cast<int32_t>(l));
    }
    if (arch->layer_schedule) {
      // transformers: layer i is MoE iff i is not in mlp_only_layers and
      // (i + 1) % decoder_sparse_step == 0.
      const std::vector<int32_t> mlp_only = LayerList(j, "mlp_only_layers", c.num_layers, origin);
      const int64_t step = f.IntOr("decoder_sparse_step", 1, 1);
      for (int64_t l = 0; l < c.num_layers; ++l)
        if (std::binary_search(mlp_only.begin(), mlp_only.end(), static_cast<int32_t>(l)) ||
            (l + 1) % step != 0)
          c.dense_layers.push_back(static_cast<int32_t>(l));
      Require(c.NumMoeLayers() > 0,
              origin + ": mlp_only_layers and decoder_sparse_step leave no MoE layer; "
                       "set num_experts to 0 for a dense model");
    }
  }
  if (c.expert_layout == ExpertLayout::kMxfp4Interleaved && c.IsMoe())
    Require(c.hidden_size % 32 == 0 && c.ExpertFf() % 32 == 0,
            origin + ": hidden_size (" + std::to_string(c.hidden_size) + ") and " +
                arch->expert_ff_field + " (" + std::to_string(c.ExpertFf()) +
                ") must be multiples of 32: the MXFP4 experts store blocks of 32 values");
  Require(ParameterCount(c) <= kMaxParameters,
          origin + ": the sizes describe a model of about " + json(ParameterCount(c)).dump() +
              " parameters, which is implausibly large (at most 2^50)");
  if (j.contains("eos_token_id"))
    c.eos_token_ids = TokenIdList(j["eos_token_id"], origin, "eos_token_id", c.vocab_size);
  if (j.contains("bos_token_id")) {
    auto bos = TokenIdList(j["bos_token_id"], origin, "bos_token_id", c.vocab_size);
    if (!bos.empty()) c.bos_token_id = bos[0];
  }
  if (j.contains("torch_dtype") && j["torch_dtype"].is_string())
    c.torch_dtype = j["torch_dtype"].get<std::string>();
  return c;
}

ModelConfig LoadModelConfig(const std::string& model_dir) {
  const std::string path = model_dir + "/config.json";
  // A missing config.json most often means a wrong -m folder; say so. Anything
  // else (a folder, a FIFO, a huge file) gets ReadRegularFile's message.
  struct stat st {};
  Require(::lstat(path.c_str(), &st) == 0,
          "cannot open " + path + " (is '" + model_dir + "' a Hugging Face model folder?)");
  return ParseModelConfig(ReadRegularFile(path, kMaxConfigFileBytes, "the model's config.json"),
                          path);
}

std::string ModelConfigToJson(const ModelConfig& c) {
  const ArchitectureSpec* arch = FindArchitecture(c.architecture);
  Require(arch != nullptr, "internal: no architecture entry for " + c.architecture);
  json j;
  j["architectures"] = {c.architecture};
  j["model_type"] = arch->model_type;
  j["vocab_size"] = c.vocab_size;
  j["hidden_size"] = c.hidden_size;
  j["intermediate_size"] = c.intermediate_size;
  j["num_hidden_layers"] = c.num_layers;
  j["num_attention_heads"] = c.num_heads;
  j["num_key_value_heads"] = c.num_kv_heads;
  if (arch->attention == AttentionKind::kLatent) {
    if (c.q_lora_rank > 0) j["q_lora_rank"] = c.q_lora_rank;
    else j["q_lora_rank"] = nullptr;
    j["kv_lora_rank"] = c.kv_lora_rank;
    j["qk_nope_head_dim"] = c.qk_nope_head_dim;
    j["qk_rope_head_dim"] = c.head_dim;
    j["v_head_dim"] = c.v_head_dim;
    if (arch->router == RouterKind::kGroupSigmoid) j["rope_interleave"] = c.rope_pairing == RopePairing::kAdjacent;
    j["first_k_dense_replace"] = c.dense_layers.size();
    j["moe_layer_freq"] = 1;
    j["n_shared_experts"] =
        c.shared_expert == SharedExpertKind::kUngated ? c.shared_expert_intermediate_size / c.moe_intermediate_size : 0;
    j["routed_scaling_factor"] = c.routed_scaling_factor;
    j["n_group"] = c.n_group;
    j["topk_group"] = c.topk_group;
    if (arch->router == RouterKind::kGroupSigmoid) {
      j["topk_method"] = "noaux_tc";
      j["scoring_func"] = "sigmoid";
    } else {
      j["topk_method"] = c.n_group > 1 ? "group_limited_greedy" : "greedy";
      j["scoring_func"] = "softmax";
    }
  } else if (c.head_dim * c.num_heads != c.hidden_size || arch->qk_norm == QkNormKind::kPerHead ||
             arch->qk_norm == QkNormKind::kWholeProjection) {
    j["head_dim"] = c.head_dim;
  }
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["rope_theta"] = c.rope_theta;
  const RopeScaling& r = c.rope_scaling;
  if (r.kind != RopeScalingKind::kDefault) {
    json rs = {{"rope_type", RopeScalingKindName(r.kind)}, {"factor", r.factor}};
    if (r.kind == RopeScalingKind::kLlama3) {
      rs["low_freq_factor"] = r.low_freq_factor;
      rs["high_freq_factor"] = r.high_freq_factor;
    }
    if (r.kind == RopeScalingKind::kLlama3 || r.kind == RopeScalingKind::kYarn)
      rs["original_max_position_embeddings"] = r.original_max_position_embeddings;
    if (r.kind == RopeScalingKind::kLongRope) {
      rs = {{"rope_type", "longrope"},
            {"factor", r.factor},
            {"short_factor", r.short_factor},
            {"long_factor", r.long_factor},
            {"short_mscale", r.short_mscale},
            {"long_mscale", r.long_mscale},
            {"original_max_position_embeddings", r.original_max_position_embeddings}};
    }
    if (r.kind == RopeScalingKind::kYarn) {
      rs["beta_fast"] = r.beta_fast;
      rs["beta_slow"] = r.beta_slow;
      rs["truncate"] = r.truncate;
      rs["attention_factor"] = r.attention_factor;
      if (r.mscale != 0) rs["mscale"] = r.mscale;
      if (r.mscale_all_dim != 0) rs["mscale_all_dim"] = r.mscale_all_dim;
    }
    j["rope_scaling"] = rs;
  }
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  j["hidden_act"] = "silu";
  switch (arch->window) {
    case WindowRule::kNone: break;
    case WindowRule::kAlways:
      j["sliding_window"] = c.sliding_window > 0 ? json(c.sliding_window) : json(nullptr);
      break;
    case WindowRule::kFlagAllLayers:
    case WindowRule::kLayerTypes: {
      json types = json::array();
      for (int64_t l = 0; l < c.num_layers; ++l)
        types.push_back(c.sliding_window > 0 && (c.sliding_layers.empty() || c.sliding_layers[l])
                            ? "sliding_attention"
                            : "full_attention");
      j["layer_types"] = types;
      j["sliding_window"] = c.sliding_window > 0 ? c.sliding_window : 128;
      break;
    }
    case WindowRule::kFlagFromMaxLayers:
      j["use_sliding_window"] = c.sliding_window > 0;
      j["sliding_window"] = c.sliding_window > 0 ? c.sliding_window : c.max_position_embeddings;
      // Every layer slides (max_window_layers 0), none does, or layer_types says which.
      if (arch->window == WindowRule::kFlagFromMaxLayers) {
        j["max_window_layers"] = c.sliding_window > 0 ? 0 : c.num_layers;
        if (!c.sliding_layers.empty()) {
          json types = json::array();
          for (bool b : c.sliding_layers) types.push_back(b ? "sliding_attention" : "full_attention");
          j["layer_types"] = types;
        }
      }
      break;
  }
  if (arch->bias == BiasRule::kAttentionField || arch->bias == BiasRule::kAttentionFieldOn)
    j["attention_bias"] = c.o_bias;
  if (arch->activation == ActivationKind::kClampedSwiGLU) j["swiglu_limit"] = c.swiglu_limit;
  if (arch->lm_head_bias) j["lm_head_bias"] = c.lm_head_bias;
  if (arch->router == RouterKind::kSparseMixer) j["router_jitter_noise"] = c.router_jitter;
  if (c.fp8_block > 0)
    j["quantization_config"] = {{"quant_method", "fp8"},
                                {"fmt", "e4m3"},
                                {"activation_scheme", "dynamic"},
                                {"weight_block_size", {c.fp8_block, c.fp8_block}}};
  if (arch->quant_method != nullptr && c.expert_layout == ExpertLayout::kMxfp4Interleaved)
    j["quantization_config"] = {
        {"quant_method", arch->quant_method},
        {"modules_to_not_convert",
         {"model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"}}};
  if (arch->bias == BiasRule::kQkvField) j["qkv_bias"] = c.qkv_bias;
  if (arch->clip_qkv) j["clip_qkv"] = c.clip_qkv > 0 ? json(c.clip_qkv) : json(nullptr);
  if (arch->multipliers) {
    j["embedding_multiplier"] = c.embedding_multiplier;
    j["residual_multiplier"] = c.residual_multiplier;
    j["attention_multiplier"] = c.attention_scale;
    j["logits_scaling"] = c.logits_scaling;
  }
  if (c.IsMoe()) {
    j[arch->experts_field] = c.num_experts;
    j["num_experts_per_tok"] = c.num_experts_per_tok;
    j[arch->expert_ff_field] = c.ExpertFf();
    if (arch->reads_norm_topk_prob) j["norm_topk_prob"] = c.norm_topk_prob;
    if (arch->shared_expert == SharedExpertKind::kSigmoidGated)
      j["shared_expert_intermediate_size"] = c.shared_expert_intermediate_size;
    if (arch->layer_schedule) {
      j["decoder_sparse_step"] = 1;
      j["mlp_only_layers"] = c.dense_layers;
    }
    j["router_aux_loss_coef"] = 0.02;
  }
  if (c.bos_token_id >= 0) j["bos_token_id"] = c.bos_token_id;
  if (c.eos_token_ids.size() == 1) j["eos_token_id"] = c.eos_token_ids[0];
  else if (!c.eos_token_ids.empty()) j["eos_token_id"] = c.eos_token_ids;
  j["torch_dtype"] = c.torch_dtype.empty() ? "bfloat16" : c.torch_dtype;
  return j.dump(2) + "\n";
}

double RopeAttentionFactor(const ModelConfig& c, int64_t seq_len) {
  const RopeScaling& r = c.rope_scaling;
  if (r.kind == RopeScalingKind::kLongRope)
    return seq_len > r.original_max_position_embeddings ? r.long_mscale : r.short_mscale;
  return r.attention_factor;
}

std::vector<double> RopeInverseFrequencies(const ModelConfig& c, int64_t seq_len) {
  const RopeScaling& r = c.rope_scaling;
  const int64_t dim = c.head_dim, half = dim / 2;
  double theta = c.rope_theta;
  // Dynamic NTK raises the base once the sequence outgrows the trained
  // context, by the factor transformers' _compute_dynamic_ntk_parameters uses.
  if (r.kind == RopeScalingKind::kDynamic && seq_len > c.max_position_embeddings) {
    const double s = static_cast<double>(seq_len) / static_cast<double>(c.max_position_embeddings);
    theta *= std::pow(r.factor * s - (r.factor - 1), static_cast<double>(dim) / static_cast<double>(dim - 2));
  }
  std::vector<double> inv(half);
  for (int64_t i = 0; i < half; ++i)
    inv[i] = 1.0 / std::pow(theta, static_cast<double>(2 * i) / static_cast<double>(dim));
  switch (r.kind) {
    case RopeScalingKind::kDefault:
    case RopeScalingKind::kDynamic:
      break;
    case RopeScalingKind::kLongRope: {
      // The short divisors while the call fits the original context, the
      // long ones past it (transformers: seq_len > original_max_position_embeddings).
      const std::vector<double>& ext =
          seq_len > r.original_max_position_embeddings ? r.long_factor : r.short_factor;
      for (int64_t i = 0; i < half; ++i) inv[i] /= ext[i];
      break;
    }
    case RopeScalingKind::kLinear:
      for (double& f : inv) f /= r.factor;
      break;
    case RopeScalingKind::kLlama3: {
      // Long wavelengths are slowed by `factor`, short ones kept, and the
      // band between blended smoothly (Llama 3.1's recipe).
      const double orig = static_cast<double>(r.original_max_position_embeddings);
      const double low_wavelen = orig / r.low_freq_factor, high_wavelen = orig / r.high_freq_factor;
      for (double& f : inv) {
        const double wavelen = 2 * M_PI / f;
        if (wavelen > low_wavelen) {
          f /= r.factor;
        } else if (wavelen >= high_wavelen) {
          const double s = (orig / wavelen - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor);
          f = (1 - s) * f / r.factor + s * f;
        }
      }
      break;
    }
    case RopeScalingKind::kYarn: {
      // Pairs that turn more than beta_fast times over the original context
      // keep their frequency, those turning fewer than beta_slow times are
      // interpolated by `factor`, and a linear ramp joins the two.
      const double orig = static_cast<double>(r.original_max_position_embeddings);
      auto correction_dim = [&](double rotations) {
        return static_cast<double>(dim) * std::log(orig / (rotations * 2 * M_PI)) / (2 * std::log(c.rope_theta));
      };
      double low = correction_dim(r.beta_fast), high = correction_dim(r.beta_slow);
      if (r.truncate) {
        low = std::floor(low);
        high = std::ceil(high);
      }
      low = std::max(low, 0.0);
      high = std::min(high, static_cast<double>(dim - 1));
      if (low == high) high += 0.001;
      for (int64_t i = 0; i < half; ++i) {
        const double ramp = std::clamp((static_cast<double>(i) - low) / (high - low), 0.0, 1.0);
        const double keep = 1 - ramp;  // weight of the original (extrapolated) frequency
        inv[i] = inv[i] / r.factor * (1 - keep) + inv[i] * keep;
      }
      break;
    }
  }
  return inv;
}

}  // namespace epwa
