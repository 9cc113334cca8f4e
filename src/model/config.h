// ModelConfig: everything the forward pass needs to know about a model,
// filled from a Hugging Face config.json.
//
// Architecture differences (MoE or dense, q/k/v biases, sliding window, tied
// embeddings) are data in this struct, set from a per-architecture table, so
// the forward pass has no `if (architecture == ...)` branches.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace epwa {

struct ModelConfig {
  std::string architecture;  // e.g. "MixtralForCausalLM"
  std::string model_type;    // e.g. "mixtral"
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;        // d_model
  int64_t intermediate_size = 0;  // d_ff of the dense MLP or of one expert
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t max_position_embeddings = 0;
  float rms_norm_eps = 1e-5f;
  double rope_theta = 10000.0;
  // Attention sees keys j with i - j < sliding_window; 0 means unlimited.
  int64_t sliding_window = 0;
  bool tie_word_embeddings = false;
  bool qkv_bias = false;  // Qwen2: q/k/v projections carry biases
  bool o_bias = false;    // Llama attention_bias=true: o_proj has a bias too

  // Mixture of experts; num_experts == 0 means a dense MLP in every layer.
  int64_t num_experts = 0;
  int64_t num_experts_per_tok = 0;
  bool norm_topk_prob = true;  // renormalise the top-k router weights to sum 1

  std::vector<int32_t> eos_token_ids;
  int32_t bos_token_id = -1;
  std::string torch_dtype;

  bool IsMoe() const { return num_experts > 0; }
  int64_t QDim() const { return num_heads * head_dim; }
  int64_t KvDim() const { return num_kv_heads * head_dim; }
};

// The architectures epwa runs, for messages: "MixtralForCausalLM, ...".
std::vector<std::string> SupportedArchitectures();

// Parses and validates config.json text. Throws epwa::Error naming `origin`
// and the field for missing or contradictory fields, unknown architectures
// (listing the supported ones) and unsupported rope_scaling.
ModelConfig ParseModelConfig(const std::string& json_text, const std::string& origin);
ModelConfig LoadModelConfig(const std::string& model_dir);

// Writes config.json text for `config` in the Hugging Face layout of its
// architecture (used by `epwa synth`).
std::string ModelConfigToJson(const ModelConfig& config);

}  // namespace epwa
