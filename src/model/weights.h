// ModelWeights: typed views of every tensor the forward pass reads.
//
// Large matrices stay where they are (memory-mapped checkpoint, zero-copy,
// stored dtype); small 1-D tensors and the MoE router are converted to
// float32 once, because they are read for every token and the router must be
// evaluated in float32 for routing decisions to be stable across precisions.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "base/aligned.h"
#include "io/safetensors.h"
#include "model/config.h"
#include "tensor/dtype.h"

namespace epwa {

// One SwiGLU feed-forward: down(silu(gate x) * up x). A dense MLP, a routed
// expert or a shared expert. The views may be slices of a fused checkpoint
// tensor (Granite's input_linear holds every expert's gate and up rows).
struct ExpertWeights {
  WeightView gate;  // [d_ff, d_model]
  WeightView up;    // [d_ff, d_model]
  WeightView down;  // [d_model, d_ff]
  // gpt-oss (ExpertLayout::kMxfp4Interleaved): gate and up are one matrix
  // whose rows alternate, row 2j gate j and row 2j+1 up j [2 d_ff, d_model];
  // `gate` and `up` are then empty. One product yields both.
  WeightView gate_up{};
  // Biases (config.expert_bias), float32, owned by the LayerWeights; null
  // without. gate_up_bias is in gate_up's interleaved row order.
  const float* gate_up_bias = nullptr;  // [2 d_ff]
  const float* down_bias = nullptr;     // [d_model]

  bool Interleaved() const { return gate_up.data != nullptr; }
  int64_t Ff() const { return Interleaved() ? gate_up.rows / 2 : gate.rows; }
};

struct LayerWeights {
  std::vector<float> attn_norm;  // [d_model]
  std::vector<float> ffn_norm;   // [d_model]
  // NormKind::kLayerNorm: the norms' biases [d_model]; empty for RMSNorm.
  std::vector<float> attn_norm_bias, ffn_norm_bias;
  WeightView q, k, v, o;         // [q_dim, d_model], [kv_dim, d_model] x2, [d_model, q_dim]
  std::vector<float> q_bias, k_bias, v_bias, o_bias;  // empty unless the config has biases
  // AttentionKind::kLatent (DeepSeek MLA); q, k and v above are then unused
  // except q, the plain q_proj when q_lora_rank is 0.
  WeightView q_a, q_b;           // [q_lora_rank, d_model], [heads * (nope + rope), q_lora_rank]
  std::vector<float> q_a_norm;   // [q_lora_rank]
  WeightView kv_a;               // [kv_lora_rank + rope, d_model]: the latent, then the shared rotary key
  std::vector<float> kv_a_norm;  // [kv_lora_rank]
  // kv_b_proj in float32 [heads * (nope + v_head_dim), kv_lora_rank]: per head
  // the nope rows that turn the latent into keys, then the rows that turn it
  // into values. Read row by row to absorb them into queries and outputs.
  std::vector<float> kv_b;
  // q/k norm weights: [head_dim] each for kPerHead, [q_dim] / [kv_dim] for
  // kWholeProjection, empty for kNone.
  std::vector<float> q_norm, k_norm;
  bool moe = false;  // routed experts (else a dense MLP)
  // Dense layer: exactly one entry, the MLP. MoE layer: one per expert.
  std::vector<ExpertWeights> experts;
  std::vector<float> router;  // [n_experts, d_model], float32; empty for dense layers
  std::vector<float> router_bias;  // [n_experts] when config.router_bias
  std::vector<float> correction_bias;  // [n_experts] when config.correction_bias (DeepSeek-V3)
  std::vector<float> sinks;        // [num_heads] when config.attention_sinks
  // Routed experts' biases when config.expert_bias: [n_experts, 2 d_ff] and
  // [n_experts, d_model]; ExpertWeights point into them.
  std::vector<float> expert_gate_up_bias, expert_down_bias;
  // SharedExpertKind::kSigmoidGated: the shared expert and its gate row [d_model].
  ExpertWeights shared;
  std::vector<float> shared_gate;
};

struct ModelWeights {
  WeightView embed;    // [vocab, d_model]
  WeightView lm_head;  // [vocab, d_model]; aliases embed when tied
  std::vector<float> final_norm;  // [d_model]
  std::vector<float> final_norm_bias;  // [d_model] for NormKind::kLayerNorm
  std::vector<float> lm_head_bias;     // [vocab] when config.lm_head_bias
  std::vector<LayerWeights> layers;
  // Buffers owning matrices converted at load time (float32 or quantized);
  // views point into them.
  std::vector<AlignedBuffer<uint8_t>> storage;
  // The mapped weight cache file quantized views point into, when one was used.
  std::shared_ptr<MappedFile> cache_mapping;
  uint64_t mapped_bytes = 0;  // bytes of weights used in place from the mapping
  uint64_t converted_bytes = 0;  // bytes converted to float32 copies
};

// The three matrices of a feed-forward.
enum class FfnPart { kGate, kUp, kDown };

// Hugging Face tensor names, from the config's kinds (architecture data, not
// code paths). Matrices that are slices of a fused tensor get the fused
// tensor's name with the slice appended, e.g.
// "model.layers.0.block_sparse_moe.input_linear.weight[5].gate".
struct TensorNames {
  static std::string Layer(int64_t layer, const std::string& suffix);
  static std::string Router(const ModelConfig& config, int64_t layer);
  // The router's bias (config.router_bias).
  static std::string RouterBias(const ModelConfig& config, int64_t layer);
  static std::string Expert(const ModelConfig& config, int64_t layer, int64_t expert, FfnPart part);
  static std::string DenseMlp(int64_t layer, FfnPart part);
  static std::string SharedExpert(const ModelConfig& config, int64_t layer, FfnPart part);
  static std::string CorrectionBias(int64_t layer);
  static std::string SharedExpertGate(int64_t layer);
};

// Every tensor a checkpoint of `config` holds, in the Hugging Face layout of
// its family, with its shape (what `epwa synth` writes, what BindWeights reads).
struct CheckpointTensor {
  std::string name;
  std::vector<int64_t> shape;
  // Stored in this dtype whatever the checkpoint's float dtype: U8 for MXFP4
  // blocks and scales, F8_E4M3 for FP8 linears and F32 for their
  // weight_scale_inv; empty for the rest.
  std::optional<DType> dtype{};
};
std::vector<CheckpointTensor> CheckpointTensors(const ModelConfig& config);

// Binds every required tensor, checking presence and exact shape. Throws
// epwa::Error naming the file and tensor on any mismatch, and for a checkpoint
// whose tensors contradict config.json. When `warnings` is given, it receives
// a line for checkpoint layers past config.json's num_hidden_layers, whose
// weights are not used (as Hugging Face warns about unused weights).
ModelWeights BindWeights(const ModelConfig& config, const TensorStore& store,
                         std::vector<std::string>* warnings = nullptr);

}  // namespace epwa
