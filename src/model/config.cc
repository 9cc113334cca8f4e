#include "model/config.h"

#include <sys/stat.h>

#include <cmath>
#include <limits>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "base/file_read.h"

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
  const double D = c.hidden_size, F = c.intermediate_size;
  const double attention = D * static_cast<double>(c.QDim()) * 2 + D * static_cast<double>(c.KvDim()) * 2;
  const double experts = c.IsMoe() ? static_cast<double>(c.num_experts) : 1.0;
  const double ffn = experts * 3 * D * F + static_cast<double>(c.num_experts) * D;
  return static_cast<double>(c.vocab_size) * D * 2 +
         static_cast<double>(c.num_layers) * (attention + ffn);
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
  // The forward pass computes in float32, so the epsilon must be a positive
  // float32: 1e300 would become infinity (every activation 0) and 1e-50 zero.
  const double eps = f.Number("rms_norm_eps", 1e-6);
  Require(eps > 0 && eps <= std::numeric_limits<float>::max() &&
              static_cast<float>(eps) > 0,
          origin + ": rms_norm_eps is " + json(eps).dump() +
              ", which is not a positive float32 value (real models use ~1e-5 or 1e-6)");
  c.rms_norm_eps = static_cast<float>(eps);
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
