// libFuzzer target for the three small JSON files of a model folder:
// config.json (ParseModelConfig), generation_config.json
// (ApplyGenerationConfig) and tokenizer_config.json (ApplyTokenizerConfig).
// The first input byte picks the parser, the rest is the file's text. The
// contract under test: any input either parses into values the rest of epwa
// can use safely, or throws epwa::Error. Any other exception, out-of-bounds
// read or undefined behaviour (ASan, UBSan) is a crash.
//
// Run: ./build-fuzz/config_fuzz -dict=fuzz/config.dict -max_total_time=120 fuzz/corpus/config

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include "base/error.h"
#include "model/config.h"
#include "runtime/engine.h"

namespace {

// What holds after a config.json parses: the invariants the loader, the
// memory planner and the forward pass rely on.
void CheckConfig(const epwa::ModelConfig& c) {
  const bool ok = c.vocab_size >= 1 && c.hidden_size >= 1 && c.intermediate_size >= 1 &&
                  c.num_layers >= 1 && c.num_heads >= 1 && c.num_kv_heads >= 1 &&
                  c.num_heads % c.num_kv_heads == 0 && c.head_dim >= 2 && c.head_dim % 2 == 0 &&
                  c.max_position_embeddings >= 1 && c.sliding_window >= 0 &&
                  std::isfinite(c.rms_norm_eps) && c.rms_norm_eps > 0 &&
                  std::isfinite(c.rope_theta) && c.rope_theta > 1 &&
                  c.num_experts_per_tok <= c.num_experts && c.bos_token_id < c.vocab_size;
  if (!ok) __builtin_trap();
  for (int32_t id : c.eos_token_ids)
    if (id < 0 || id >= c.vocab_size) __builtin_trap();
  // The family's kinds and schedule: MoE layers exist when there are experts,
  // widths are positive, rotary scaling and multipliers are usable numbers.
  if (c.IsMoe() && (c.NumMoeLayers() < 1 || c.ExpertFf() < 1)) __builtin_trap();
  const epwa::RopeScaling& r = c.rope_scaling;
  if (!(r.factor >= 1 && r.factor <= 4096) || !(r.attention_factor > 0 && r.attention_factor <= 100) ||
      c.ContextLimit() < c.max_position_embeddings)
    __builtin_trap();
  for (float m : {c.embedding_multiplier, c.residual_multiplier, c.logits_scaling})
    if (!(std::isfinite(m) && m > 0)) __builtin_trap();
  if (!(std::isfinite(c.attention_scale) && c.attention_scale >= 0) || c.clip_qkv < 0) __builtin_trap();
  for (double f : epwa::RopeInverseFrequencies(c, c.ContextLimit()))
    if (!std::isfinite(f) || f < 0) __builtin_trap();
  // Serialising and parsing again must give the same model.
  const epwa::ModelConfig d = epwa::ParseModelConfig(epwa::ModelConfigToJson(c), "again");
  if (d.hidden_size != c.hidden_size || d.num_layers != c.num_layers ||
      d.head_dim != c.head_dim || d.num_experts != c.num_experts ||
      d.vocab_size != c.vocab_size || d.eos_token_ids != c.eos_token_ids ||
      d.MoeLayers() != c.MoeLayers() || d.rope_scaling.kind != c.rope_scaling.kind ||
      d.qk_norm != c.qk_norm || d.router != c.router || d.expert_layout != c.expert_layout)
    __builtin_trap();
}

void CheckDefaults(const epwa::GenerationDefaults& d, int64_t vocab_size) {
  auto finite = [](const std::optional<float>& v) { return !v || std::isfinite(*v); };
  if (!finite(d.temperature) || !finite(d.top_p) || !finite(d.min_p) ||
      !finite(d.repetition_penalty))
    __builtin_trap();
  if ((d.temperature && *d.temperature < 0) || (d.top_p && !(*d.top_p > 0 && *d.top_p <= 1)) ||
      (d.min_p && !(*d.min_p >= 0 && *d.min_p <= 1)) ||
      (d.repetition_penalty && *d.repetition_penalty <= 0) || (d.top_k && *d.top_k < 0) ||
      (d.max_new_tokens && *d.max_new_tokens < 1) || d.bos_token_id >= vocab_size)
    __builtin_trap();
  for (int32_t id : d.eos_token_ids)
    if (id < 0 || id >= vocab_size) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string text(reinterpret_cast<const char*>(data) + 1, size - 1);
  // Large enough for the real generation configs of the seed corpus.
  constexpr int64_t kVocab = 262144;
  try {
    switch (data[0] % 3) {
      case 0:
        CheckConfig(epwa::ParseModelConfig(text, "config.json"));
        break;
      case 1: {
        epwa::GenerationDefaults d;
        d.eos_token_ids = {2};
        d.bos_token_id = 1;
        epwa::ApplyGenerationConfig(text, "generation_config.json", kVocab, &d);
        CheckDefaults(d, kVocab);
        break;
      }
      default: {
        epwa::GenerationDefaults d;
        // A stand-in for the tokenizer: two known pieces.
        epwa::ApplyTokenizerConfig(
            text, "tokenizer_config.json",
            [](const std::string& piece) -> std::optional<int32_t> {
              if (piece == "<s>") return 1;
              if (piece == "</s>") return 2;
              return std::nullopt;
            },
            &d);
        CheckDefaults(d, kVocab);
        break;
      }
    }
  } catch (const epwa::Error&) {
    // Rejecting malformed input with a message is the expected outcome.
  }
  return 0;
}
