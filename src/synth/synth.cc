#include "synth/synth.h"

#include <sys/statvfs.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <tuple>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "base/file_read.h"
#include "io/atomic_file.h"
#include "io/safetensors.h"
#include "model/weights.h"
#include "synth/corpus.h"
#include "tokenizer/tokenizer.h"

namespace epwa {
namespace {

namespace fs = std::filesystem;

ModelConfig Make(const char* arch, int64_t vocab, int64_t d, int64_t ff, int64_t layers,
                 int64_t heads, int64_t kv_heads, int64_t experts, int64_t top_k, int64_t ctx,
                 double theta) {
  ModelConfig c;
  c.architecture = arch;
  c.vocab_size = vocab;
  c.hidden_size = d;
  c.intermediate_size = ff;
  c.num_layers = layers;
  c.num_heads = heads;
  c.num_kv_heads = kv_heads;
  c.head_dim = d / heads;
  c.num_experts = experts;
  c.num_experts_per_tok = top_k;
  c.max_position_embeddings = ctx;
  c.rope_theta = theta;
  c.rms_norm_eps = 1e-5f;
  c.bos_token_id = 1;
  c.eos_token_ids = {2};
  // Qwen2 always has q/k/v biases; the family table sets the rest in Finish.
  c.qkv_bias = std::string(arch) == "Qwen2ForCausalLM";
  return c;
}

// Fills the family's kinds (router, expert layout, q/k norm, ...) by passing
// the preset through config.json text and the real parser, so a preset is
// exactly what loading its folder will produce.
ModelConfig Finish(const ModelConfig& c) { return ParseModelConfig(ModelConfigToJson(c), "preset"); }

struct Preset {
  const char* name;
  const char* description;
  ModelConfig config;
};

std::vector<Preset> Presets() {
  std::vector<Preset> p;
  auto add = [&](const char* name, const char* description, const ModelConfig& c) {
    p.push_back({name, description, Finish(c)});
  };
  // Small models: the bundled default and the reference-test fixtures.
  add("tiny-random-moe", "4-layer Mixtral layout, 8 experts top-2, GQA; the default model",
      Make("MixtralForCausalLM", 768, 128, 256, 4, 4, 2, 8, 2, 2048, 10000.0));
  add("fixture-mixtral", "2-layer Mixtral layout, 4 experts top-2 (reference tests)",
      Make("MixtralForCausalLM", 512, 64, 96, 2, 4, 2, 4, 2, 256, 10000.0));
  {
    ModelConfig c = Make("MistralForCausalLM", 512, 64, 128, 2, 4, 1, 0, 0, 256, 10000.0);
    c.sliding_window = 5;
    add("fixture-mistral-swa", "2-layer Mistral layout, sliding window 5 (reference tests)", c);
  }
  add("fixture-llama", "2-layer Llama layout, untied lm_head (reference tests)",
      Make("LlamaForCausalLM", 512, 64, 160, 2, 8, 2, 0, 0, 256, 500000.0));
  {
    ModelConfig c = Make("Qwen2ForCausalLM", 512, 64, 128, 2, 4, 2, 0, 0, 256, 1000000.0);
    c.tie_word_embeddings = true;
    add("fixture-qwen2", "2-layer Qwen2 layout, q/k/v biases, tied embeddings (reference tests)", c);
  }
  {
    // head_dim 24 with 4 heads: q_proj is 96 wide, not d_model, as in small Qwen3 models.
    ModelConfig c = Make("Qwen3ForCausalLM", 512, 64, 128, 2, 4, 2, 0, 0, 256, 1000000.0);
    c.head_dim = 24;
    c.tie_word_embeddings = true;
    add("fixture-qwen3", "2-layer Qwen3 layout: explicit head_dim, per-head q/k norm, tied (reference tests)", c);
    // The same with a window of 4 on layer 1 only (use_sliding_window and
    // layer_types: one full, one sliding layer).
    c.sliding_window = 4;
    c.sliding_layers = {false, true};
    add("fixture-qwen3-swa", "fixture-qwen3 with a sliding window on layer 1 only (reference tests)", c);
  }
  {
    // Layer 1 of 3 is dense (mlp_only_layers), so the schedule is exercised;
    // yarn scaling with a small original context so that it changes the frequencies.
    ModelConfig c = Make("Qwen3MoeForCausalLM", 512, 64, 160, 3, 4, 2, 16, 4, 256, 1000000.0);
    c.head_dim = 32;
    c.moe_intermediate_size = 48;
    c.dense_layers = {1};
    c.rope_scaling.kind = RopeScalingKind::kYarn;
    c.rope_scaling.factor = 4.0;
    c.rope_scaling.original_max_position_embeddings = 64;
    c.rope_scaling.attention_factor = 0.1 * std::log(4.0) + 1.0;
    add("fixture-qwen3-moe", "3-layer Qwen3-MoE layout, 16 experts top-4, layer 1 dense, yarn x4 (reference tests)", c);
  }
  {
    ModelConfig c = Make("OlmoeForCausalLM", 512, 64, 48, 2, 4, 4, 16, 4, 256, 10000.0);
    c.clip_qkv = 1.5f;
    c.norm_topk_prob = false;
    add("fixture-olmoe", "2-layer OLMoE layout: whole-projection q/k norm, clip_qkv, no renorm (reference tests)", c);
  }
  {
    ModelConfig c = Make("Qwen2MoeForCausalLM", 512, 64, 128, 2, 4, 4, 8, 2, 256, 1000000.0);
    c.moe_intermediate_size = 32;
    c.shared_expert_intermediate_size = 96;
    c.norm_topk_prob = false;
    c.qkv_bias = true;
    c.rope_scaling.kind = RopeScalingKind::kDynamic;
    c.rope_scaling.factor = 2.0;
    c.max_position_embeddings = 8;  // so that 16-token fixtures run past it
    add("fixture-qwen2-moe", "2-layer Qwen2-MoE layout: shared expert, q/k/v biases, dynamic NTK x2 (reference tests)", c);
  }
  {
    ModelConfig c = Make("GraniteMoeForCausalLM", 512, 64, 32, 2, 4, 2, 8, 4, 256, 10000.0);
    c.tie_word_embeddings = true;
    c.embedding_multiplier = 12.0f;
    c.residual_multiplier = 0.22f;
    c.attention_scale = 0.0625f;
    c.logits_scaling = 6.0f;
    add("fixture-granite-moe", "2-layer Granite-MoE layout: fused experts, multipliers (reference tests)", c);
  }
  {
    ModelConfig c = Make("LlamaForCausalLM", 512, 64, 160, 2, 4, 2, 0, 0, 256, 500000.0);
    c.rope_scaling.kind = RopeScalingKind::kLlama3;
    c.rope_scaling.factor = 8.0;
    c.rope_scaling.low_freq_factor = 1.0;
    c.rope_scaling.high_freq_factor = 4.0;
    c.rope_scaling.original_max_position_embeddings = 64;
    add("fixture-llama31", "2-layer Llama layout with Llama-3.1 (llama3) rope scaling (reference tests)", c);
  }
  {
    ModelConfig c = Make("MistralForCausalLM", 512, 64, 128, 2, 4, 2, 0, 0, 256, 10000.0);
    c.rope_scaling.kind = RopeScalingKind::kLinear;
    c.rope_scaling.factor = 4.0;
    add("fixture-linear-rope", "2-layer Mistral layout with linear rope scaling x4 (reference tests)", c);
  }
  {
    // gpt-oss: sinks, sliding and full layers (window 4 so that 16-token
    // fixtures reach past it), yarn x4 without truncation, router bias,
    // MXFP4 experts with interleaved gate/up rows and biases, clamped SwiGLU.
    // q_proj is 128 wide for d_model 64, as gpt-oss's is wider than its d_model.
    ModelConfig c = Make("GptOssForCausalLM", 512, 64, 32, 3, 8, 2, 8, 4, 256, 150000.0);
    c.head_dim = 16;
    c.sliding_window = 4;
    c.sliding_layers = {true, false, true};
    c.rope_scaling.kind = RopeScalingKind::kYarn;
    c.rope_scaling.factor = 4.0;
    c.rope_scaling.original_max_position_embeddings = 64;
    c.rope_scaling.truncate = false;
    c.rope_scaling.attention_factor = 0.1 * std::log(4.0) + 1.0;
    c.qkv_bias = c.o_bias = true;
    add("fixture-gpt-oss", "3-layer gpt-oss layout: sinks, sliding/full layers, MXFP4 experts (reference tests)", c);
  }
  {
    // Phi-3.5-MoE: LayerNorm with biases, attention and lm_head biases,
    // sparsemixer top-2 with a wide jitter (0.25) so that near-ties share
    // weight, longrope with an original context of 8 so that 16-token
    // fixtures switch from the short to the long factors.
    ModelConfig c = Make("PhimoeForCausalLM", 512, 64, 96, 2, 4, 2, 4, 2, 256, 10000.0);
    c.qkv_bias = c.o_bias = true;
    c.lm_head_bias = true;
    c.router_jitter = 0.25f;
    RopeScaling& r = c.rope_scaling;
    r.kind = RopeScalingKind::kLongRope;
    r.original_max_position_embeddings = 8;
    r.factor = 32.0;
    for (int64_t i = 0; i < c.head_dim / 2; ++i) {
      r.short_factor.push_back(1.0 + 0.05 * static_cast<double>(i));
      r.long_factor.push_back(1.0 + 0.75 * static_cast<double>(i));
    }
    r.short_mscale = 1.1;
    r.long_mscale = 1.243163121016122;
    r.attention_factor = r.short_mscale;
    add("fixture-phimoe", "2-layer Phi-3.5-MoE layout: LayerNorm, sparsemixer, longrope, lm_head bias (reference tests)", c);
  }
  // The DeepSeek fixtures share MLA ranks small enough to check by hand (kv
  // latent 32, nope 16 + rope 8 per head, v 16), adjacent-pair rotary with
  // yarn x4 on an original context of 64, layer 0 dense, experts of d_ff 32
  // in 4 groups of which 2 are kept.
  auto deepseek = [](const char* arch, int64_t experts, int64_t top_k, double mscale) {
    ModelConfig c = Make(arch, 512, 64, 128, 3, 4, 4, experts, top_k, 256, 10000.0);
    c.head_dim = 8;
    c.kv_lora_rank = 32;
    c.qk_nope_head_dim = 16;
    c.v_head_dim = 16;
    c.moe_intermediate_size = 32;
    c.shared_expert = SharedExpertKind::kUngated;
    c.dense_layers = {0};
    c.n_group = 4;
    c.topk_group = 2;
    c.rope_pairing = RopePairing::kAdjacent;
    c.rope_scaling.kind = RopeScalingKind::kYarn;
    c.rope_scaling.factor = 4.0;
    c.rope_scaling.original_max_position_embeddings = 64;
    c.rope_scaling.mscale = c.rope_scaling.mscale_all_dim = mscale;
    c.rope_scaling.attention_factor = 1.0;
    return c;
  };
  {
    // DeepSeek-V2: no low-rank query, mscale_all_dim 0.707 (the softmax
    // scale's m^2), group-limited greedy, weights x1.5, two shared experts.
    ModelConfig c = deepseek("DeepseekV2ForCausalLM", 8, 3, 0.707);
    c.shared_expert_intermediate_size = 64;
    c.routed_scaling_factor = 1.5f;
    c.norm_topk_prob = false;
    add("fixture-deepseek-v2", "3-layer DeepSeek-V2 layout: MLA, group-limited greedy, shared experts (reference tests)", c);
  }
  {
    // DeepSeek-V3: a low-rank query, sigmoid routing with a correction bias
    // (groups by their top-2 sums), renormalised then x2.5, one shared expert.
    ModelConfig c = deepseek("DeepseekV3ForCausalLM", 16, 4, 1.0);
    c.q_lora_rank = 24;
    c.shared_expert_intermediate_size = 32;
    c.routed_scaling_factor = 2.5f;
    c.norm_topk_prob = true;
    add("fixture-deepseek-v3", "3-layer DeepSeek-V3 layout: MLA with q_lora, sigmoid group routing (reference tests)", c);
    // The same in FP8: every linear of the layers F8_E4M3 with 128 x 128
    // block scales (one partial block per matrix at this size).
    c.fp8_block = 128;
    add("fixture-deepseek-v3-fp8", "fixture-deepseek-v3 with FP8 (e4m3, 128 x 128 block scales) linears (reference tests)", c);
  }
  // A Mixtral-shaped model of about 1 GB whose per-token weights leave the
  // caches: the decode/prefill benchmark.
  add("bench-moe", "2-layer Mixtral layout, d_model 2048, 8 experts of d_ff 4096 (benchmarks)",
      Make("MixtralForCausalLM", 32000, 2048, 4096, 2, 16, 4, 8, 2, 4096, 1000000.0));
  // Real shapes (published configs; see ../shared/guide/architectures.md).
  add("mixtral-8x7b", "Mixtral-8x7B",
      Make("MixtralForCausalLM", 32000, 4096, 14336, 32, 32, 8, 8, 2, 32768, 1000000.0));
  {
    ModelConfig c = Make("MistralForCausalLM", 32000, 4096, 14336, 32, 32, 8, 0, 0, 32768, 10000.0);
    c.sliding_window = 4096;
    add("mistral-7b", "Mistral-7B-v0.1 (sliding window 4096)", c);
  }
  add("llama-3-8b", "Llama-3-8B",
      Make("LlamaForCausalLM", 128256, 4096, 14336, 32, 32, 8, 0, 0, 8192, 500000.0));
  {
    ModelConfig c = Make("LlamaForCausalLM", 128256, 4096, 14336, 32, 32, 8, 0, 0, 131072, 500000.0);
    c.rope_scaling.kind = RopeScalingKind::kLlama3;
    c.rope_scaling.factor = 8.0;
    c.rope_scaling.low_freq_factor = 1.0;
    c.rope_scaling.high_freq_factor = 4.0;
    c.rope_scaling.original_max_position_embeddings = 8192;
    c.bos_token_id = 128000;
    c.eos_token_ids = {128001};
    add("llama-3.1-8b", "Llama-3.1-8B (llama3 rope scaling x8)", c);
  }
  {
    ModelConfig c = Make("Qwen2ForCausalLM", 151936, 2048, 11008, 36, 16, 2, 0, 0, 32768, 1000000.0);
    c.tie_word_embeddings = true;
    add("qwen2.5-3b", "Qwen2.5-3B (tied embeddings)", c);
  }
  {
    ModelConfig c = Make("Qwen3MoeForCausalLM", 151936, 2048, 6144, 48, 32, 4, 128, 8, 40960, 1000000.0);
    c.head_dim = 128;
    c.moe_intermediate_size = 768;
    c.norm_topk_prob = true;
    c.rms_norm_eps = 1e-6f;
    c.bos_token_id = 151643;
    c.eos_token_ids = {151645};
    add("qwen3-30b-a3b", "Qwen3-30B-A3B (128 experts top-8, per-head q/k norm)", c);
  }
  {
    ModelConfig c = Make("OlmoeForCausalLM", 50304, 2048, 1024, 16, 16, 16, 64, 8, 4096, 10000.0);
    c.norm_topk_prob = false;
    c.bos_token_id = -1;
    c.eos_token_ids = {50279};
    add("olmoe-1b-7b", "OLMoE-1B-7B (64 experts top-8, whole-projection q/k norm)", c);
  }
  {
    ModelConfig c = Make("Qwen2MoeForCausalLM", 151936, 2048, 5632, 24, 16, 16, 60, 4, 8192, 1000000.0);
    c.moe_intermediate_size = 1408;
    c.shared_expert_intermediate_size = 5632;
    c.norm_topk_prob = false;
    c.qkv_bias = true;
    c.rms_norm_eps = 1e-6f;
    c.bos_token_id = 151643;
    c.eos_token_ids = {151643};
    add("qwen1.5-moe-a2.7b", "Qwen1.5-MoE-A2.7B (60 experts top-4 + a gated shared expert)", c);
  }
  {
    ModelConfig c = Make("GraniteMoeForCausalLM", 49155, 1024, 512, 24, 16, 8, 32, 8, 131072, 10000000.0);
    c.tie_word_embeddings = true;
    c.embedding_multiplier = 12.0f;
    c.residual_multiplier = 0.22f;
    c.attention_scale = 0.015625f;
    c.logits_scaling = 6.0f;
    c.rms_norm_eps = 1e-6f;
    c.bos_token_id = 0;
    c.eos_token_ids = {0};
    add("granite-3.1-1b-a400m", "Granite-3.1-1B-A400M (32 experts top-8, fused experts, multipliers)", c);
  }
  {
    ModelConfig c = Make("GptOssForCausalLM", 201088, 2880, 2880, 24, 64, 8, 32, 4, 131072, 150000.0);
    c.head_dim = 64;
    c.sliding_window = 128;
    for (int64_t l = 0; l < c.num_layers; ++l) c.sliding_layers.push_back(l % 2 == 0);
    c.rope_scaling.kind = RopeScalingKind::kYarn;
    c.rope_scaling.factor = 32.0;
    c.rope_scaling.original_max_position_embeddings = 4096;
    c.rope_scaling.truncate = false;
    c.rope_scaling.attention_factor = 0.1 * std::log(32.0) + 1.0;
    c.qkv_bias = c.o_bias = true;
    c.bos_token_id = 199998;
    c.eos_token_ids = {200002};
    add("gpt-oss-20b", "gpt-oss-20b (32 MXFP4 experts top-4, sinks, sliding/full layers)", c);
  }
  {
    // The shape of Phi-3.5-MoE-instruct. Its published longrope factor lists
    // are not among the configs in ../shared, so the preset divides by 1.0
    // (short) and 1.0 (long) with the published mscale: the speed and memory
    // figures do not depend on them; run a real config for its frequencies.
    ModelConfig c = Make("PhimoeForCausalLM", 32064, 4096, 6400, 32, 32, 8, 16, 2, 131072, 10000.0);
    c.qkv_bias = c.o_bias = true;
    c.lm_head_bias = true;
    c.sliding_window = 131072;
    RopeScaling& r = c.rope_scaling;
    r.kind = RopeScalingKind::kLongRope;
    r.original_max_position_embeddings = 4096;
    r.factor = 32.0;
    r.short_factor.assign(static_cast<size_t>(c.head_dim / 2), 1.0);
    r.long_factor.assign(static_cast<size_t>(c.head_dim / 2), 1.0);
    r.short_mscale = r.long_mscale = r.attention_factor = 1.243163121016122;
    c.bos_token_id = 1;
    c.eos_token_ids = {32000};
    add("phi-3.5-moe", "Phi-3.5-MoE shape (16 experts top-2 sparsemixer, LayerNorm, longrope)", c);
  }
  {
    ModelConfig c = Make("DeepseekV2ForCausalLM", 102400, 2048, 10944, 27, 16, 16, 64, 6, 163840, 10000.0);
    c.head_dim = 64;
    c.kv_lora_rank = 512;
    c.qk_nope_head_dim = 128;
    c.v_head_dim = 128;
    c.moe_intermediate_size = 1408;
    c.shared_expert = SharedExpertKind::kUngated;
    c.shared_expert_intermediate_size = 2816;
    c.dense_layers = {0};
    c.norm_topk_prob = false;
    c.rms_norm_eps = 1e-6f;
    c.rope_pairing = RopePairing::kAdjacent;
    c.rope_scaling.kind = RopeScalingKind::kYarn;
    c.rope_scaling.factor = 40.0;
    c.rope_scaling.original_max_position_embeddings = 4096;
    c.rope_scaling.mscale = c.rope_scaling.mscale_all_dim = 0.707;
    c.rope_scaling.attention_factor = 1.0;
    c.bos_token_id = 100000;
    c.eos_token_ids = {100001};
    add("deepseek-v2-lite", "DeepSeek-V2-Lite (MLA, 64 experts top-6 + 2 shared, layer 0 dense)", c);
  }
  return p;
}

uint64_t SplitMix(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

uint64_t Fnv1a(const std::string& s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return h;
}

// How a tensor's values are scaled. Linear layers get std 1/sqrt(fan_in) so
// activations keep unit scale through the stack; the lm_head gets a larger
// std so logits are of order 1-10 and sampling is not uniform; norm weights
// are 1 +- a little so that a missing norm weight would show in tests.
struct Init {
  float scale;
  float offset;
};

Init InitFor(const std::string& name, const ModelConfig& c, int64_t fan_in) {
  auto ends_with = [&](const char* s) {
    const size_t n = std::strlen(s);
    return name.size() >= n && name.compare(name.size() - n, n, s) == 0;
  };
  if (ends_with("norm.weight")) return {0.1f, 1.0f};
  // Sinks and a router bias of order 1, so that both change the results.
  if (ends_with(".sinks") || ends_with("router.bias")) return {1.0f, 0.0f};
  if (ends_with("e_score_correction_bias")) return {0.3f, 0.0f};
  if (ends_with(".bias") || ends_with("_bias")) return {0.1f, 0.0f};
  if (name == "model.embed_tokens.weight")
    return {c.tie_word_embeddings ? 3.0f / std::sqrt(static_cast<float>(c.hidden_size)) : 1.0f, 0.0f};
  if (name == "lm_head.weight") return {3.0f / std::sqrt(static_cast<float>(fan_in)), 0.0f};
  // Routers get a larger spread so that routing is decisive (no near-ties).
  const bool router = ends_with("block_sparse_moe.gate.weight") || ends_with("mlp.gate.weight") ||
                      ends_with("router.layer.weight") || ends_with("mlp.router.weight");
  if (router) return {2.0f / std::sqrt(static_cast<float>(fan_in)), 0.0f};
  return {1.0f / std::sqrt(static_cast<float>(fan_in)), 0.0f};
}

// MXFP4 blocks ([E, rows, cols / 32, 16]) or E8M0 scales ([E, rows, cols /
// 32]) of a seeded matrix. Blocks are uniform random bytes, so every FP4
// code is equally likely (root mean square 2.93); the scales are chosen so
// that the decoded weights have about 1/sqrt(cols) spread, like the float
// linears, with a seeded +-1 jitter in the exponent. Every MXFP4 value is
// exactly representable, which is what the reference fixtures need.
TensorSpec Mxfp4Spec(const CheckpointTensor& s, uint64_t seed) {
  const bool scales = s.name.size() > 7 && s.name.compare(s.name.size() - 7, 7, "_scales") == 0;
  const int64_t cols = (scales ? s.shape.back() : s.shape[s.shape.size() - 2]) * 32;
  const int base = 127 + static_cast<int>(std::lround(std::log2(1.0 / std::sqrt(static_cast<double>(cols)) / 2.93)));
  TensorSpec spec;
  spec.name = s.name;
  spec.dtype = DType::kU8;
  spec.shape = s.shape;
  const uint64_t key = SynthTensorKey(seed, s.name);
  spec.fill = [key, scales, base](uint8_t* out, size_t offset_bytes, size_t nbytes) {
    for (size_t i = 0; i < nbytes; ++i) {
      const uint64_t bits = SplitMix(key + offset_bytes + i);
      out[i] = scales ? static_cast<uint8_t>(base + static_cast<int>(bits % 3) - 1)
                      : static_cast<uint8_t>(bits >> 32);
    }
  };
  return spec;
}

// The FP8 E4M3 code nearest to v (ties to the even code), from the table of
// the 127 non-negative finite codes.
uint8_t F32ToF8E4M3(float v) {
  static const std::vector<float> positive = [] {
    std::vector<float> t;
    for (int code = 0; code < 0x7f; ++code) t.push_back(F8E4M3ToF32(static_cast<uint8_t>(code)));
    return t;
  }();
  const float a = std::min(std::abs(v), positive.back());
  const auto it = std::lower_bound(positive.begin(), positive.end(), a);
  size_t code = static_cast<size_t>(it - positive.begin());
  if (code > 0 && (code == positive.size() || a - positive[code - 1] < positive[code] - a ||
                   (a - positive[code - 1] == positive[code] - a && (code - 1) % 2 == 0)))
    --code;
  return static_cast<uint8_t>(code | (v < 0 ? 0x80 : 0));
}

// An FP8 linear ([out, in], F8_E4M3) or its weight_scale_inv ([out / 128,
// in / 128] blocks, F32): the values are unit-spread draws rounded to E4M3
// (times 2, to use more of its range), and each block's scale brings them to
// about 1/sqrt(in), with a seeded +-25% per block so that a wrong block
// index would show.
TensorSpec Fp8Spec(const CheckpointTensor& s, uint64_t seed) {
  TensorSpec spec;
  spec.name = s.name;
  spec.dtype = *s.dtype;
  spec.shape = s.shape;
  const uint64_t key = SynthTensorKey(seed, s.name);
  if (spec.dtype == DType::kF8E4M3) {
    spec.fill = [key](uint8_t* out, size_t offset_bytes, size_t nbytes) {
      for (size_t i = 0; i < nbytes; ++i) out[i] = F32ToF8E4M3(2.0f * SynthUnitValue(key, offset_bytes + i));
    };
  } else {
    // The scales of "<weight>_scale_inv": the weight's input width sets the spread.
    const int64_t in_blocks = s.shape[1];
    const float base = 0.5f / std::sqrt(static_cast<float>(in_blocks * 128));
    spec.fill = [key, base](uint8_t* out, size_t offset_bytes, size_t nbytes) {
      for (size_t i = 0; i < nbytes / 4; ++i) {
        const float v = base * (1.0f + 0.25f * SynthUnitValue(key, offset_bytes / 4 + i) / 1.7320508f);
        std::memcpy(out + 4 * i, &v, 4);
      }
    };
  }
  return spec;
}

std::vector<TensorSpec> TensorSpecs(const ModelConfig& c, DType dtype, uint64_t seed) {
  const std::vector<CheckpointTensor> shapes = CheckpointTensors(c);
  std::vector<TensorSpec> specs;
  for (const auto& s : shapes) {
    if (s.dtype == DType::kU8) {
      specs.push_back(Mxfp4Spec(s, seed));
      continue;
    }
    if (s.dtype == DType::kF8E4M3 || s.dtype == DType::kF32) {
      specs.push_back(Fp8Spec(s, seed));
      continue;
    }
    // The input width is the last axis (also of stacked [E, out, in] expert tensors).
    const int64_t fan_in = s.shape.back();
    const Init init = InitFor(s.name, c, fan_in);
    // Router and 1-D tensors are stored in float32 like the rest when the
    // dtype is float32, else in the checkpoint dtype, as real checkpoints do.
    TensorSpec spec;
    spec.name = s.name;
    spec.dtype = dtype;
    spec.shape = s.shape;
    const std::string name = s.name;
    const uint64_t key = SynthTensorKey(seed, name);
    spec.fill = [key, init, dtype](uint8_t* out, size_t offset_bytes, size_t nbytes) {
      const size_t esize = DTypeSize(dtype);
      const uint64_t first = offset_bytes / esize;
      const size_t count = nbytes / esize;
      for (size_t i = 0; i < count; ++i) {
        const float v = init.offset + init.scale * SynthUnitValue(key, first + i);
        switch (dtype) {
          case DType::kF32: std::memcpy(out + i * 4, &v, 4); break;
          case DType::kF16: { uint16_t h = F32ToF16(v); std::memcpy(out + i * 2, &h, 2); break; }
          case DType::kBF16: { uint16_t h = F32ToBF16(v); std::memcpy(out + i * 2, &h, 2); break; }
          // Checkpoints hold float tensors only; quantized types are made at
          // load time, so synth never writes them.
          case DType::kQ8:
          case DType::kQ4:
          case DType::kNF4:
          case DType::kMXFP4:
          case DType::kU8:
          case DType::kF8E4M3: break;
        }
      }
    };
    specs.push_back(std::move(spec));
  }
  return specs;
}

size_t SpecBytes(const TensorSpec& s) {
  size_t n = DTypeSize(s.dtype);
  for (int64_t d : s.shape) n *= static_cast<size_t>(d);
  return n;
}

void WriteText(const std::string& path, const std::string& text) {
  AtomicFile f(path);
  f.Write(text.data(), text.size());
  f.Commit();
}

}  // namespace

std::vector<std::string> SynthPresetNames() {
  std::vector<std::string> names;
  for (const auto& p : Presets()) names.push_back(p.name);
  return names;
}

ModelConfig SynthPreset(const std::string& name) {
  std::string list;
  for (const auto& p : Presets()) {
    if (name == p.name) return p.config;
    list += (list.empty() ? "" : ", ") + std::string(p.name);
  }
  throw Error("unknown synth preset '" + name + "' (presets: " + list + ")");
}

uint64_t SynthTensorKey(uint64_t seed, const std::string& name) {
  return SplitMix(seed ^ Fnv1a(name));
}

float SynthUnitValue(uint64_t tensor_key, uint64_t index) {
  const uint64_t bits = SplitMix(tensor_key + index);
  // 24 random bits -> [0, 1) exactly representable, then unit variance.
  const float u = static_cast<float>(bits >> 40) * (1.0f / 16777216.0f);
  return (u - 0.5f) * 3.4641016f;
}


// --force replaces a folder only when it holds nothing but what synth itself
// writes: "--out ." or "--out ~" with --force used to delete every file of
// the user's folder. Never the current folder or one above it, nor a
// symbolic link (whose target synth did not make).
static void CheckReplaceableSynthFolder(const fs::path& out, const std::string& shown) {
  const fs::file_status status = fs::symlink_status(out);
  Require(status.type() == fs::file_type::directory,
          "synth --force will not replace '" + shown + "': it is not a folder");
  std::error_code ec;
  const fs::path cwd = fs::current_path(ec);
  if (!ec) {
    for (fs::path p = cwd; !p.empty(); p = p.parent_path()) {
      Require(!fs::equivalent(p, out, ec),
              "synth --force will not replace '" + shown +
                  "': it is the current folder or one above it");
      if (p == p.parent_path()) break;
    }
  }
  static const std::regex kSynthFiles(
      R"((config|generation_config|tokenizer|tokenizer_config)\.json|model\.safetensors(\.index\.json)?|)"
      R"(model-[0-9]{5}-of-[0-9]{5}\.safetensors)");
  for (const fs::directory_entry& e : fs::directory_iterator(out)) {
    const std::string name = e.path().filename().string();
    Require(e.symlink_status().type() == fs::file_type::regular && std::regex_match(name, kSynthFiles),
            "synth --force will not replace '" + shown + "': it holds '" + name +
                "', which synth does not write (only an earlier synth output folder is replaced)");
  }
}

// A real config.json cut to `layers` layers (0: all) and set to `dtype`: the
// text is kept as published, with num_hidden_layers, the per-layer lists
// (mlp_only_layers, layer_types) and torch_dtype adjusted; returned with its
// parsed form.
std::pair<std::string, ModelConfig> SynthConfigFromFile(const std::string& path, int64_t layers,
                                                        const std::string& torch_dtype) {
  const std::string text = ReadRegularFile(path, kMaxConfigFileBytes, "config.json");
  const ModelConfig full = ParseModelConfig(text, path);  // validates the original first
  nlohmann::json j = nlohmann::json::parse(text);
  if (layers > 0) {
    Require(layers <= full.num_layers, "--layers " + std::to_string(layers) + " exceeds the " +
                                           std::to_string(full.num_layers) + " layers of " + path);
    j["num_hidden_layers"] = layers;
    if (j.contains("mlp_only_layers") && j["mlp_only_layers"].is_array()) {
      nlohmann::json kept = nlohmann::json::array();
      for (const auto& v : j["mlp_only_layers"])
        if (v.get<int64_t>() < layers) kept.push_back(v);
      j["mlp_only_layers"] = kept;
    }
    if (j.contains("layer_types") && j["layer_types"].is_array() &&
        static_cast<int64_t>(j["layer_types"].size()) > layers)
      j["layer_types"].erase(j["layer_types"].begin() + layers, j["layer_types"].end());
    if (j.contains("max_window_layers") && j["max_window_layers"].is_number_integer() &&
        j["max_window_layers"].get<int64_t>() > layers)
      j["max_window_layers"] = layers;
  }
  j["torch_dtype"] = torch_dtype;
  std::string out = j.dump(2) + "\n";
  ModelConfig c = ParseModelConfig(out, path + " (cut to " + std::to_string(layers) + " layers)");
  return {std::move(out), std::move(c)};
}

uint64_t WriteSynthModel(const SynthOptions& o) {
  const std::string torch_dtype =
      o.dtype == DType::kF32 ? "float32" : o.dtype == DType::kF16 ? "float16" : "bfloat16";
  Require(o.preset.empty() != o.config_path.empty(),
          "synth needs exactly one of --preset NAME and --config FILE");
  ModelConfig c;
  std::string config_text;
  const std::string what = o.preset.empty() ? o.config_path : o.preset;
  if (!o.config_path.empty()) {
    std::tie(config_text, c) = SynthConfigFromFile(o.config_path, o.layers, torch_dtype);
  } else {
    c = SynthPreset(o.preset);
    if (o.layers > 0) {
      Require(o.layers <= c.num_layers, "--layers " + std::to_string(o.layers) + " exceeds the " +
                                            std::to_string(c.num_layers) + " layers of " + o.preset);
      c.num_layers = o.layers;
      // Dense-layer indices past the cut no longer exist.
      std::erase_if(c.dense_layers, [&](int32_t l) { return l >= o.layers; });
    }
    c.torch_dtype = torch_dtype;
    config_text = ModelConfigToJson(c);
  }
  Require(!o.out_dir.empty(), "synth needs an output folder (--out DIR)");
  // weakly_canonical drops "." and ".." so that "--out ." names the folder
  // itself, not an entry called "." inside it.
  const fs::path out = fs::weakly_canonical(fs::absolute(o.out_dir));
  Require(out.has_relative_path(), "synth --out '" + o.out_dir + "' names the root folder");
  if (fs::symlink_status(out).type() != fs::file_type::not_found) {
    Require(o.force, "output folder '" + o.out_dir + "' already exists (use --force to replace it)");
    CheckReplaceableSynthFolder(out, o.out_dir);
  }
  fs::create_directories(out.parent_path());

  std::vector<TensorSpec> specs = TensorSpecs(c, o.dtype, o.seed);
  uint64_t total = 0;
  for (const auto& s : specs) total += SpecBytes(s);

  struct statvfs vfs;
  if (statvfs(out.parent_path().c_str(), &vfs) == 0) {
    const uint64_t free_bytes = static_cast<uint64_t>(vfs.f_bavail) * vfs.f_frsize;
    const uint64_t needed = total + (64ull << 20);
    Require(needed <= free_bytes,
            "writing " + what + " needs " + std::to_string(needed >> 20) + " MiB but only " +
                std::to_string(free_bytes >> 20) + " MiB are free on " + out.parent_path().string() +
                " (try --layers N for fewer layers)");
  }

  // Build everything in a temporary sibling folder and rename it into place
  // at the end, so an interrupted run never leaves a half-written model.
  const fs::path tmp = out.string() + ".tmp-" + std::to_string(getpid());
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  try {
    // Shards: consecutive tensors up to shard_bytes each.
    std::vector<std::vector<TensorSpec>> shards(1);
    uint64_t in_shard = 0;
    for (auto& s : specs) {
      const uint64_t b = SpecBytes(s);
      if (in_shard > 0 && in_shard + b > o.shard_bytes) {
        shards.emplace_back();
        in_shard = 0;
      }
      shards.back().push_back(std::move(s));
      in_shard += b;
    }
    const std::map<std::string, std::string> metadata = {{"format", "pt"}};
    if (shards.size() == 1) {
      WriteSafetensors((tmp / "model.safetensors").string(), shards[0], metadata);
    } else {
      nlohmann::json index;
      index["metadata"] = {{"total_size", total}};
      index["weight_map"] = nlohmann::json::object();
      for (size_t i = 0; i < shards.size(); ++i) {
        char file[64];
        std::snprintf(file, sizeof(file), "model-%05zu-of-%05zu.safetensors", i + 1, shards.size());
        WriteSafetensors((tmp / file).string(), shards[i], metadata);
        for (const auto& s : shards[i]) index["weight_map"][s.name] = file;
      }
      WriteText((tmp / "model.safetensors.index.json").string(), index.dump(2) + "\n");
    }
    WriteText((tmp / "config.json").string(), config_text);
    nlohmann::json gen = {{"do_sample", true}, {"temperature", 0.8}, {"top_p", 0.95}, {"top_k", 40}};
    if (c.bos_token_id >= 0) gen["bos_token_id"] = c.bos_token_id;
    if (!c.eos_token_ids.empty())
      gen["eos_token_id"] = c.eos_token_ids.size() == 1 ? nlohmann::json(c.eos_token_ids[0])
                                                        : nlohmann::json(c.eos_token_ids);
    WriteText((tmp / "generation_config.json").string(), gen.dump(2) + "\n");
    const int32_t tokenizer_vocab = static_cast<int32_t>(c.vocab_size);
    WriteText((tmp / "tokenizer.json").string(),
              TrainByteFallbackBpeJson(SynthTokenizerCorpus(), tokenizer_vocab));
    WriteText((tmp / "tokenizer_config.json").string(), TokenizerConfigJson());
    // The old folder is moved aside before the new one takes its place and
    // only then deleted, so a failure at any step loses neither.
    const fs::path old = out.string() + ".old-" + std::to_string(getpid());
    const bool had_old = fs::symlink_status(out).type() != fs::file_type::not_found;
    if (had_old) fs::rename(out, old);
    try {
      fs::rename(tmp, out);
    } catch (...) {
      std::error_code ec;
      if (had_old) fs::rename(old, out, ec);
      throw;
    }
    if (had_old) {
      std::error_code ec;
      fs::remove_all(old, ec);
    }
  } catch (...) {
    std::error_code ec;
    fs::remove_all(tmp, ec);
    throw;
  }
  return total;
}

}  // namespace epwa
