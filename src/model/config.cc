#include "model/config.h"

#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "base/error.h"

namespace epwa {
namespace {

using nlohmann::json;

// Per-architecture facts that config.json leaves implicit.
struct ArchitectureTraits {
  const char* name;
  const char* model_type;
  bool moe;
  bool qkv_bias;
  bool has_sliding_window;  // reads `sliding_window` from config.json
};

constexpr ArchitectureTraits kArchitectures[] = {
    {"MixtralForCausalLM", "mixtral", true, false, true},
    {"LlamaForCausalLM", "llama", false, false, false},
    {"MistralForCausalLM", "mistral", false, false, true},
    {"Qwen2ForCausalLM", "qwen2", false, true, true},
};

const ArchitectureTraits* FindArchitecture(const std::string& name) {
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
  double Number(const char* key, double fallback) const {
    if (!Has(key)) return fallback;
    Require(j_[key].is_number(), origin_ + ": field '" + key + "' must be a number");
    return j_[key].get<double>();
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
    int64_t x = v.get<int64_t>();
    Require(x >= min_value, origin_ + ": field '" + key + "' is " + std::to_string(x) +
                                ", must be at least " + std::to_string(min_value));
    // Guard every size against absurd values before anything is allocated.
    Require(x <= (int64_t{1} << 40), origin_ + ": field '" + key + "' is implausibly large");
    return x;
  }
  const json& j_;
  const std::string& origin_;
};

std::vector<int32_t> TokenIdList(const json& v, const std::string& origin, const char* key) {
  std::vector<int32_t> ids;
  if (v.is_null()) return ids;
  auto add = [&](const json& x) {
    Require(x.is_number_integer() && x.get<int64_t>() >= 0 && x.get<int64_t>() < (1ll << 31),
            origin + ": field '" + key + "' must be a token id or a list of token ids");
    ids.push_back(static_cast<int32_t>(x.get<int64_t>()));
  };
  if (v.is_array()) {
    for (const auto& x : v) add(x);
  } else {
    add(v);
  }
  return ids;
}

}  // namespace

std::vector<std::string> SupportedArchitectures() {
  std::vector<std::string> names;
  for (const auto& a : kArchitectures) names.push_back(a.name);
  return names;
}

ModelConfig ParseModelConfig(const std::string& json_text, const std::string& origin) {
  json j;
  try {
    j = json::parse(json_text);
  } catch (const json::parse_error& e) {
    throw Error(origin + ": malformed JSON (" + std::string(e.what()) + ")");
  }
  Require(j.is_object(), origin + ": expected a JSON object");
  Require(j.contains("architectures") && j["architectures"].is_array() &&
              !j["architectures"].empty() && j["architectures"][0].is_string(),
          origin + ": field 'architectures' is missing (expected e.g. [\"MixtralForCausalLM\"])");
  ModelConfig c;
  c.architecture = j["architectures"][0].get<std::string>();
  const ArchitectureTraits* arch = FindArchitecture(c.architecture);
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
  Require(c.head_dim % 2 == 0, origin + ": head_dim must be even for rotary embeddings");
  c.max_position_embeddings = f.IntOr("max_position_embeddings", 4096, 1);
  c.rms_norm_eps = static_cast<float>(f.Number("rms_norm_eps", 1e-6));
  Require(c.rms_norm_eps > 0, origin + ": rms_norm_eps must be positive");
  c.rope_theta = f.Number("rope_theta", 10000.0);
  Require(c.rope_theta > 1.0, origin + ": rope_theta must be greater than 1");
  if (f.Has("rope_scaling")) {
    const json& rs = j["rope_scaling"];
    std::string type = "?";
    if (rs.is_object()) {
      for (const char* key : {"rope_type", "type"})
        if (rs.contains(key) && rs[key].is_string()) type = rs[key].get<std::string>();
    }
    // "default" is the HF spelling of plain RoPE; every other type changes the
    // frequencies and would silently produce wrong logits if ignored.
    Require(type == "default", origin + ": rope_scaling type '" + type +
                                   "' is not supported (only plain RoPE with rope_theta)");
  }
  c.tie_word_embeddings = f.Bool("tie_word_embeddings", false);
  c.qkv_bias = arch->qkv_bias;
  if (c.architecture == "LlamaForCausalLM") {
    c.qkv_bias = c.o_bias = f.Bool("attention_bias", false);
    Require(!f.Bool("mlp_bias", false),
            origin + ": mlp_bias=true is not supported (no released Llama model uses it)");
  }
  if (arch->has_sliding_window && f.Has("sliding_window")) {
    // Qwen2 configs carry a sliding_window that is only used when
    // use_sliding_window is true; Mistral and Mixtral use it whenever set.
    bool enabled = c.model_type == "qwen2" ? f.Bool("use_sliding_window", false) : true;
    if (enabled) c.sliding_window = f.Int("sliding_window", 1);
    // Qwen2 windows only the layers from max_window_layers on; epwa applies
    // one window to every layer, so refuse the mixed case rather than guess.
    Require(!(enabled && c.model_type == "qwen2" &&
              f.IntOr("max_window_layers", c.num_layers, 0) < c.num_layers),
            origin + ": Qwen2 with use_sliding_window=true and max_window_layers below "
                     "num_hidden_layers is not supported");
  }
  if (arch->moe) {
    c.num_experts = f.Int("num_local_experts", 1);
    c.num_experts_per_tok = f.Int("num_experts_per_tok", 1);
    Require(c.num_experts_per_tok <= c.num_experts,
            origin + ": num_experts_per_tok (" + std::to_string(c.num_experts_per_tok) +
                ") exceeds num_local_experts (" + std::to_string(c.num_experts) + ")");
  }
  if (j.contains("eos_token_id")) c.eos_token_ids = TokenIdList(j["eos_token_id"], origin, "eos_token_id");
  if (j.contains("bos_token_id")) {
    auto bos = TokenIdList(j["bos_token_id"], origin, "bos_token_id");
    if (!bos.empty()) c.bos_token_id = bos[0];
  }
  for (int32_t id : c.eos_token_ids)
    Require(id < c.vocab_size, origin + ": eos_token_id " + std::to_string(id) +
                                   " is outside the vocabulary (vocab_size " +
                                   std::to_string(c.vocab_size) + ")");
  if (j.contains("torch_dtype") && j["torch_dtype"].is_string())
    c.torch_dtype = j["torch_dtype"].get<std::string>();
  return c;
}

ModelConfig LoadModelConfig(const std::string& model_dir) {
  const std::string path = model_dir + "/config.json";
  std::ifstream in(path, std::ios::binary);
  Require(in.good(), "cannot open " + path + " (is '" + model_dir + "' a Hugging Face model folder?)");
  std::stringstream ss;
  ss << in.rdbuf();
  return ParseModelConfig(ss.str(), path);
}

std::string ModelConfigToJson(const ModelConfig& c) {
  json j;
  j["architectures"] = {c.architecture};
  j["model_type"] = c.model_type;
  j["vocab_size"] = c.vocab_size;
  j["hidden_size"] = c.hidden_size;
  j["intermediate_size"] = c.intermediate_size;
  j["num_hidden_layers"] = c.num_layers;
  j["num_attention_heads"] = c.num_heads;
  j["num_key_value_heads"] = c.num_kv_heads;
  if (c.head_dim != c.hidden_size / c.num_heads) j["head_dim"] = c.head_dim;
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["rope_theta"] = c.rope_theta;
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  j["hidden_act"] = "silu";
  if (c.model_type == "qwen2") {
    j["use_sliding_window"] = c.sliding_window > 0;
    j["sliding_window"] = c.sliding_window > 0 ? c.sliding_window : c.max_position_embeddings;
  } else if (c.model_type == "mistral" || c.model_type == "mixtral") {
    j["sliding_window"] = c.sliding_window > 0 ? json(c.sliding_window) : json(nullptr);
  } else if (c.model_type == "llama") {
    j["attention_bias"] = c.o_bias;
  }
  if (c.IsMoe()) {
    j["num_local_experts"] = c.num_experts;
    j["num_experts_per_tok"] = c.num_experts_per_tok;
    j["router_aux_loss_coef"] = 0.02;
  }
  if (c.bos_token_id >= 0) j["bos_token_id"] = c.bos_token_id;
  if (c.eos_token_ids.size() == 1) j["eos_token_id"] = c.eos_token_ids[0];
  else if (!c.eos_token_ids.empty()) j["eos_token_id"] = c.eos_token_ids;
  j["torch_dtype"] = c.torch_dtype.empty() ? "bfloat16" : c.torch_dtype;
  return j.dump(2) + "\n";
}

}  // namespace epwa
