// ModelConfig: everything the forward pass needs to know about a model,
// filled from a Hugging Face config.json.
//
// Architectures are data. A family (MixtralForCausalLM, Qwen3MoeForCausalLM,
// ...) is one entry of a table in config.cc that says which config.json
// fields it reads and which *kind* it uses for each concern below; the
// forward pass, the weight binder, the planner and the router hash ask the
// kind, never the architecture name. A new family is a table entry, a
// reference fixture and at most one new kind.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

namespace epwa {

// How q and k are normalised before the rotary embedding.
enum class QkNormKind {
  kNone,
  kPerHead,          // Qwen3: RMSNorm of each head vector over head_dim, one [head_dim] weight
  kWholeProjection,  // OLMoE: RMSNorm over the whole q (heads*head_dim) / k projection
};

// How a router turns its logits into (experts, weights). The routing trace
// records the logits and the kind's choice; see RouteToken.
enum class RouterKind {
  kSoftmaxTopK,  // Mixtral, Qwen-MoE, OLMoE: softmax over all experts, top-k, renorm optional
  kTopKSoftmax,  // Granite-MoE, gpt-oss: top-k of the logits, softmax over those k
  kSparseMixer,  // Phi-3.5-MoE: sparsemixer's inference rule, top-2, weights not renormalised
  kGroupSoftmax,  // DeepSeek-V2: softmax; group-limited (group score: its best expert) or
                  // greedy top-k; weights x routed_scaling_factor (or renormalised)
  kGroupSigmoid,  // DeepSeek-V3: sigmoid; selection by sigmoid + e_score_correction_bias in
                  // the topk_group groups with the largest top-2 sums; weights the unbiased
                  // sigmoids, renormalised when norm_topk_prob, x routed_scaling_factor
};

// The attention block.
enum class AttentionKind {
  kMultiHead,  // q/k/v/o projections, grouped-query heads, a key and a value per KV head
  kLatent,     // DeepSeek multi-head latent attention: the cache holds one normalised latent
               // (kv_lora_rank) and one shared rotary key (qk_rope_head_dim) per token;
               // per-head keys and values come from kv_b_proj, absorbed into the query and
               // the output (see Transformer::LatentAttention)
};

// How the rotary embedding pairs a head's dimensions.
enum class RopePairing {
  kHalves,      // Hugging Face "rotate half": i with i + d/2
  kAdjacent,    // GPT-J / DeepSeek: 2i with 2i + 1
};

// The normalisation before attention, before the feed-forward and at the end.
enum class NormKind {
  kRms,        // RMSNorm with a weight (every family but Phi-3.5-MoE)
  kLayerNorm,  // LayerNorm with a weight and a bias (Phi-3.5-MoE)
};

// How the experts of an MoE layer are stored in the checkpoint.
enum class ExpertLayout {
  kMixtral,   // block_sparse_moe.experts.{e}.w1/w3/w2 (gate/up/down), router block_sparse_moe.gate
  kPerExpert, // mlp.experts.{e}.{gate,up,down}_proj, router mlp.gate (Qwen-MoE, OLMoE)
  kFused,     // block_sparse_moe.input_linear [E, 2I, H] (gate rows then up rows) and
              // output_linear [E, H, I], router block_sparse_moe.router.layer (Granite-MoE)
  kMxfp4Interleaved,  // gpt-oss: mlp.experts.{gate_up,down}_proj_{blocks,scales} in MXFP4 with
                      // {gate_up,down}_proj_bias; gate_up rows interleaved (2j gate, 2j+1 up);
                      // router mlp.router.{weight,bias}
};

// The feed-forward activation of experts and dense MLPs.
enum class ActivationKind {
  kSwiGLU,         // silu(gate) * up
  kClampedSwiGLU,  // gpt-oss: g = min(gate, limit), u = clip(up, -limit, limit),
                   // (u + 1) * g * sigmoid(alpha * g)
};

// A shared expert applied to every token beside the routed ones.
enum class SharedExpertKind {
  kNone,
  kSigmoidGated,  // Qwen2-MoE: sigmoid(x . shared_expert_gate) * SwiGLU_shared(x)
  kUngated,       // DeepSeek: mlp.shared_experts, added unweighted
};

// Rotary scaling (config.json rope_scaling / rope_parameters).
enum class RopeScalingKind { kDefault, kLinear, kDynamic, kLlama3, kYarn, kLongRope };

struct RopeScaling {
  RopeScalingKind kind = RopeScalingKind::kDefault;
  double factor = 1.0;
  // llama3 and yarn: the pre-training context the frequencies were fitted to.
  int64_t original_max_position_embeddings = 0;
  double low_freq_factor = 1.0, high_freq_factor = 4.0;  // llama3
  double beta_fast = 32.0, beta_slow = 1.0;              // yarn
  bool truncate = true;                                  // yarn: floor/ceil the ramp ends
  double mscale = 0.0, mscale_all_dim = 0.0;             // yarn (DeepSeek): 0 when absent
  // The factor cos and sin are multiplied by (yarn); 1 for the other kinds.
  // longrope has two (below), chosen per call like its frequencies.
  double attention_factor = 1.0;
  // longrope (Phi-3.5): per-pair divisors of the frequencies [head_dim / 2],
  // the short ones while a call's last position + 1 is at most
  // original_max_position_embeddings, the long ones past it, each with its
  // attention factor (short_mscale / long_mscale).
  std::vector<double> short_factor, long_factor;
  double short_mscale = 1.0, long_mscale = 1.0;
  // Whether the frequencies depend on the length of the call (dynamic NTK, longrope).
  bool DependsOnLength() const { return kind == RopeScalingKind::kDynamic || kind == RopeScalingKind::kLongRope; }
};

struct ModelConfig {
  std::string architecture;  // e.g. "MixtralForCausalLM"
  std::string model_type;    // e.g. "mixtral"
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;        // d_model
  int64_t intermediate_size = 0;  // d_ff of a dense MLP layer (and of an expert when
                                  // moe_intermediate_size is 0)
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t max_position_embeddings = 0;
  float rms_norm_eps = 1e-5f;  // also LayerNorm's epsilon (Phi-3.5-MoE reads it so)
  NormKind norm = NormKind::kRms;
  bool lm_head_bias = false;   // lm_head.bias [vocab] (Phi-3.5-MoE)
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  // Attention sees keys j with i - j < sliding_window; 0 means unlimited.
  int64_t sliding_window = 0;
  // Which layers the window applies to (gpt-oss's layer_types): empty means
  // every layer; else one entry per layer, true for "sliding_attention".
  std::vector<bool> sliding_layers;
  // Per-head attention sinks (gpt-oss): a learned logit per query head that
  // joins every softmax row as an extra column with no value, so a row's
  // weights sum to less than 1 (self_attn.sinks [num_heads]).
  bool attention_sinks = false;
  bool tie_word_embeddings = false;
  bool qkv_bias = false;  // q/k/v projections carry biases
  bool o_bias = false;    // o_proj carries a bias
  QkNormKind qk_norm = QkNormKind::kNone;
  AttentionKind attention = AttentionKind::kMultiHead;
  RopePairing rope_pairing = RopePairing::kHalves;
  // kLatent (DeepSeek MLA); head_dim is qk_rope_head_dim there (the rotary width).
  int64_t q_lora_rank = 0;   // 0: a plain q_proj
  int64_t kv_lora_rank = 0;
  int64_t qk_nope_head_dim = 0;
  int64_t v_head_dim = 0;
  float clip_qkv = 0;     // OLMoE: q, k, v clamped to [-clip, clip] after the norms; 0 = off

  // Granite multipliers (1 elsewhere): the embedding output is multiplied by
  // embedding_multiplier, each branch output by residual_multiplier before it
  // is added, the logits divided by logits_scaling. attention_scale replaces
  // head_dim^-0.5 when non-zero.
  float embedding_multiplier = 1.0f;
  float residual_multiplier = 1.0f;
  float attention_scale = 0.0f;
  float logits_scaling = 1.0f;

  ActivationKind activation = ActivationKind::kSwiGLU;
  float swiglu_limit = 7.0f;    // kClampedSwiGLU (config.json swiglu_limit)
  float swiglu_alpha = 1.702f;  // kClampedSwiGLU (fixed in transformers' GptOssExperts)

  // Mixture of experts; num_experts == 0 means a dense MLP in every layer.
  int64_t num_experts = 0;
  int64_t num_experts_per_tok = 0;
  int64_t moe_intermediate_size = 0;  // d_ff of one expert; 0: intermediate_size
  bool norm_topk_prob = true;  // kSoftmaxTopK: renormalise the top-k weights to sum 1
  float router_jitter = 0.01f; // kSparseMixer: its epsilon (config router_jitter_noise)
  // kGroupSoftmax / kGroupSigmoid (DeepSeek).
  int64_t n_group = 1, topk_group = 1;
  float routed_scaling_factor = 1.0f;
  bool correction_bias = false;  // mlp.gate.e_score_correction_bias [E] (V3)
  // FP8 checkpoints (quantization_config quant_method fp8): the block size of
  // their weight_scale_inv (128); 0 for float checkpoints.
  int64_t fp8_block = 0;
  RouterKind router = RouterKind::kSoftmaxTopK;
  bool router_bias = false;  // the router linear has a bias [E] (gpt-oss), added before selection
  bool expert_bias = false;  // routed experts' linears have biases (gpt-oss)
  ExpertLayout expert_layout = ExpertLayout::kMixtral;
  SharedExpertKind shared_expert = SharedExpertKind::kNone;
  int64_t shared_expert_intermediate_size = 0;
  // Layers that use a dense MLP although the model has experts (Qwen's
  // mlp_only_layers and decoder_sparse_step), ascending. Empty: every layer
  // is MoE when num_experts > 0.
  std::vector<int32_t> dense_layers;

  std::vector<int32_t> eos_token_ids;
  int32_t bos_token_id = -1;
  std::string torch_dtype;

  bool IsMoe() const { return num_experts > 0; }
  bool IsMoeLayer(int64_t layer) const {
    return IsMoe() && !std::binary_search(dense_layers.begin(), dense_layers.end(),
                                          static_cast<int32_t>(layer));
  }
  // Model layer indices of the MoE layers, ascending.
  std::vector<int32_t> MoeLayers() const {
    std::vector<int32_t> out;
    for (int64_t l = 0; l < num_layers; ++l)
      if (IsMoeLayer(l)) out.push_back(static_cast<int32_t>(l));
    return out;
  }
  int64_t NumMoeLayers() const { return static_cast<int64_t>(MoeLayers().size()); }
  int64_t ExpertFf() const { return moe_intermediate_size > 0 ? moe_intermediate_size : intermediate_size; }
  bool HasDenseLayers() const { return !IsMoe() || !dense_layers.empty(); }
  // The widest feed-forward of any layer (dense MLP, expert or shared expert).
  int64_t MaxFf() const {
    int64_t f = IsMoe() ? ExpertFf() : intermediate_size;
    if (HasDenseLayers()) f = std::max(f, intermediate_size);
    if (shared_expert != SharedExpertKind::kNone) f = std::max(f, shared_expert_intermediate_size);
    return f;
  }
  bool Latent() const { return attention == AttentionKind::kLatent; }
  // Width of the q projection: heads x head_dim, or heads x (nope + rope) for MLA.
  int64_t QDim() const { return Latent() ? num_heads * (qk_nope_head_dim + head_dim) : num_heads * head_dim; }
  // Width of the attention output (o_proj's input).
  int64_t AttnOutDim() const { return Latent() ? num_heads * v_head_dim : QDim(); }
  // Floats the KV cache holds per token and layer: a key and a value per KV
  // head, or for MLA the latent and the shared rotary key.
  int64_t CacheKeyDim() const { return Latent() ? kv_lora_rank + head_dim : KvDim(); }
  int64_t CacheValueDim() const { return Latent() ? 0 : KvDim(); }
  // The sliding window of `layer`; 0 when it attends to the whole context.
  int64_t WindowOf(int64_t layer) const {
    if (sliding_layers.empty()) return sliding_window;
    return sliding_layers[static_cast<size_t>(layer)] ? sliding_window : 0;
  }
  int64_t KvDim() const { return num_kv_heads * head_dim; }
  // Query heads per key/value head (grouped-query attention); 1 for latent
  // attention, whose heads share one compressed cache row.
  int64_t QueryHeadsPerKvHead() const {
    return Latent() || num_kv_heads <= 0 ? 1 : std::max<int64_t>(1, num_heads / num_kv_heads);
  }
  // The longest context the model supports: max_position_embeddings, times
  // the factor for dynamic NTK scaling (whose purpose is running past it).
  int64_t ContextLimit() const {
    if (rope_scaling.kind == RopeScalingKind::kDynamic)
      return static_cast<int64_t>(static_cast<double>(max_position_embeddings) * rope_scaling.factor);
    return max_position_embeddings;
  }
};

const char* QkNormKindName(QkNormKind kind);
const char* RouterKindName(RouterKind kind);
const char* ActivationKindName(ActivationKind kind);
const char* NormKindName(NormKind kind);
const char* RopeScalingKindName(RopeScalingKind kind);

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

// The rotary inverse frequencies [head_dim / 2] for a forward call whose last
// position is seq_len - 1 (only dynamic scaling depends on it), and the factor
// cos/sin are multiplied by. Written from transformers' modeling_rope_utils.
std::vector<double> RopeInverseFrequencies(const ModelConfig& config, int64_t seq_len);
// The factor cos and sin are multiplied by for that call (longrope's depends
// on seq_len; the other kinds' is rope_scaling.attention_factor).
double RopeAttentionFactor(const ModelConfig& config, int64_t seq_len);

}  // namespace epwa
