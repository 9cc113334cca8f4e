// Engine: a loaded model folder (config, tokenizer, weights) plus the
// prefill/decode loop, sampling and scoring.
//
// Frontends (the CLI today; the watermark and a server later) use only this
// API. Generation exposes two hooks: a logits processor that sees the logits
// and the routing of the step that produced them before sampling (the
// watermark's entry point), and a token callback for streaming.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/thread_pool.h"
#include "io/safetensors.h"
#include "model/config.h"
#include "model/routing.h"
#include "model/transformer.h"
#include "plan/memory_plan.h"
#include "plan/quant_level.h"
#include "runtime/sampler.h"
#include "tokenizer/tokenizer.h"

namespace epwa {

struct LoadOptions {
  LoadOptions() = default;
  LoadOptions(std::string dir, int thread_count) : model_dir(std::move(dir)), threads(thread_count) {}
  std::string model_dir;
  int threads = 0;  // 0 = all hardware threads
  QuantLevel quant = QuantLevel::kAuto;
  std::string quant_source = "default";  // what decided `quant`, for the report
  // Context (prompt + generated tokens) the memory plan must hold; 0 = the
  // model's max_position_embeddings, capped at 4096.
  int64_t plan_ctx = 0;
  // Sequences the plan holds at once (each with a KV cache of plan_ctx
  // positions) for BatchEngine, and the rows of its largest forward pass
  // (0 = plan_ctx: a whole prompt in one pass).
  int parallel = 1;
  int64_t batch_tokens = 0;
  // Memory the whole process may use; unset = free host memory (the lower of
  // MemAvailable and the cgroup limit) plus what the process already uses.
  std::optional<uint64_t> mem_budget_bytes;
  // At int levels, store an untied lm_head as Q8 (PlanContext::int8_lm_head).
  bool int8_lm_head = false;
  // Quantized weights are cached on disk (see plan/weight_cache.h) unless off.
  bool use_cache = true;
  std::string cache_dir;  // empty: DefaultCacheDir()
  // Copy weights the plan would read from file mappings (16-bit matrices used
  // in place, weight-cache hits) into the process's own memory
  // (PlanContext::copy_weights; --no-mmap, EPW_NO_MMAP).
  bool copy_weights = false;
  // Element type of every KV cache (PlanContext::kv_cache; --kv-cache,
  // EPW_KV_CACHE): F32, F16 or BF16.
  DType kv_cache = DType::kF32;
  // Called during weight conversion with (bytes done, bytes total); may be empty.
  std::function<void(uint64_t, uint64_t)> progress;
};

// Wall-clock milliseconds of each load stage.
struct LoadStats {
  double config_ms = 0;
  double tokenizer_ms = 0;
  double weights_ms = 0;      // map, validate every header, bind tensors
  double plan_ms = 0;         // the memory plan
  double quantize_ms = 0;     // converting / quantizing matrices to the plan's formats (and the --no-mmap copies)
  double router_hash_ms = 0;  // IRSH (model/router_hash.h); 0 for dense models
  double total_ms = 0;
  uint64_t weight_bytes = 0;     // bytes of tensor data in the checkpoint
  uint64_t mapped_bytes = 0;     // used in place from the mapping
  uint64_t converted_bytes = 0;  // in process memory: converted, quantized or copied
  uint64_t copied_bytes = 0;     // of those, copied as they are out of a mapping (--no-mmap)
  std::string kv_cache = "f32";  // the KV cache element type (--kv-cache)
  uint64_t peak_rss_bytes = 0;
  std::string quant_level;         // the concrete level loaded ("int4", ...)
  std::string quant_source;        // what decided it ("--quant int4", "EPW_LOAD_IN_4BIT=true", ...)
  uint64_t planned_bytes = 0;      // the plan's expected peak (without margin)
  uint64_t budget_bytes = 0;       // the memory the plan had to fit
  int64_t plan_ctx = 0;            // context the plan was made for (per sequence)
  int plan_parallel = 1;           // sequences it holds at once
  int64_t plan_batch_tokens = 0;   // rows of the largest forward pass it holds
  std::string router_hash;         // IRSH hex SHA-256; empty for dense models
  std::string cache;               // "hit", "written", "off", "not used (...)"
  std::string cache_path;
  double cache_ms = 0;             // identity, validation or writing of the cache
  std::vector<std::string> warnings;  // e.g. a corrupt cache file that was rebuilt
};

// Defaults from generation_config.json and tokenizer_config.json; command
// line flags override them.
struct GenerationDefaults {
  std::optional<float> temperature, top_p, min_p, repetition_penalty;
  std::optional<int32_t> top_k, max_new_tokens;
  std::optional<bool> do_sample;
  std::vector<int32_t> eos_token_ids;  // union of config.json and generation_config.json
  int32_t bos_token_id = -1;
  bool add_bos_token = false;
};

// Reads generation_config.json text (named `origin` in messages) into `d`,
// which already holds config.json's BOS/EOS ids: sampling defaults, and EOS
// ids added to the list. Throws epwa::Error naming `origin` and the field for
// every value the command line flags or Hugging Face would refuse (negative
// temperature, top_p outside (0, 1], ids outside [0, vocab_size), integers
// past int32, non-finite numbers, wrong types).
void ApplyGenerationConfig(const std::string& json_text, const std::string& origin,
                           int64_t vocab_size, GenerationDefaults* d);
// Reads tokenizer_config.json text: add_bos_token, and BOS/EOS given by their
// text (resolved with `piece_to_id`) when no id was known yet.
void ApplyTokenizerConfig(const std::string& json_text, const std::string& origin,
                          const std::function<std::optional<int32_t>(const std::string&)>& piece_to_id,
                          GenerationDefaults* d);

struct GenerateStats {
  int64_t prompt_tokens = 0;
  int64_t generated_tokens = 0;
  double prefill_ms = 0;
  double decode_ms = 0;
  double prefill_tokens_per_s = 0;
  double decode_tokens_per_s = 0;
  // "eos", "length", "context", "callback"; batched runs also "cancelled"
  // and "error" (runtime/batch_engine.h).
  std::string stop_reason;
};

struct GenerateOptions {
  int32_t max_new_tokens = 64;
  // Keep going past end-of-sequence tokens (for fixed-length evaluations).
  bool ignore_eos = false;
  // Tokens that end the sequence like an EOS (stop reason "eos") besides the
  // model's own, e.g. a chat template's end-of-turn token (<|im_end|>) when
  // generation_config.json does not list it. Ignored with ignore_eos.
  std::vector<int32_t> stop_token_ids;
  SamplerParams sampler;
  // Called with the logits of the next token ([vocab], modifiable), the
  // routing of the step that produced them (the trace covers the tokens fed
  // in that step; its last token is the one predicting), and all tokens so
  // far. Runs before sampling.
  std::function<void(std::span<float> logits, const RoutingTrace& routing,
                     std::span<const int32_t> context)>
      logits_processor;
  // Called after each sampled token; return false to stop.
  std::function<bool(int32_t token)> on_token;
};

struct GenerateResult {
  std::vector<int32_t> tokens;  // generated ids only (EOS included if produced)
  GenerateStats stats;
};

// Output of one causal forward pass over a whole sequence.
struct ScoreResult {
  std::vector<int32_t> ids;
  std::vector<float> logits;  // [T, vocab]: row t predicts token t + 1
  RoutingTrace routing;
};

// The context a memory plan assumes when none is given: the model's
// max_position_embeddings, capped at 4096.
int64_t DefaultPlanContext(const ModelConfig& config);

// Generation options as the model folder sets them: generation_config.json's
// max_new_tokens (else `default_max_tokens`), do_sample (false: greedy),
// temperature, top_k, top_p, min_p and repetition_penalty over epwa's
// defaults. Frontends apply their own overrides on top (the CLI's flags,
// the Python module's arguments), so every frontend starts from the same
// place.
GenerateOptions DefaultGenerateOptions(const GenerationDefaults& defaults, int32_t default_max_tokens);

// The load statistics as JSON, the object every frontend reports under
// "load".
nlohmann::json LoadStatsJson(const LoadStats& s);
// One sequence's statistics as JSON ("stats" of `epwa run --json`):
// tokens, times, rates and the stop reason.
nlohmann::json GenerateStatsJson(const GenerateStats& s);

class Engine {
 public:
  // Throws epwa::Error with a one-line message for every bad-input case.
  static std::unique_ptr<Engine> Load(const LoadOptions& options);

  const ModelConfig& config() const { return model_->config(); }
  const Tokenizer& tokenizer() const { return *tokenizer_; }
  const TensorStore& tensors() const { return *store_; }
  const ModelWeights& weights() const { return model_->weights(); }
  const GenerationDefaults& defaults() const { return defaults_; }
  // The model folder it was loaded from.
  const std::string& model_dir() const { return model_dir_; }
  const LoadStats& load_stats() const { return load_stats_; }
  int threads() const { return pool_->size(); }
  // The element type of the KV caches it allocates (LoadOptions::kv_cache).
  DType kv_cache_dtype() const { return kv_cache_dtype_; }
  // The KV cache capacity a sequence may use (context window).
  int64_t max_context() const { return config().ContextLimit(); }

  // Text to prompt ids: the tokenizer's special tokens plus BOS when
  // tokenizer_config.json asks for it and the tokenizer did not add it.
  std::vector<int32_t> EncodePrompt(const std::string& text) const;

  // Throws epwa::Error if `prompt` is empty or leaves no room in the context.
  void ValidatePrompt(std::span<const int32_t> prompt) const;
  // One sequence: the one-sequence case of BatchEngine (runtime/batch_engine.h).
  GenerateResult Generate(std::span<const int32_t> prompt, const GenerateOptions& options);
  // One forward pass over `ids` (in chunks when they exceed the planned rows
  // per pass): the logits of every position and the routing of every token.
  // Its matrix products are row-invariant (kernels::ScopedRowInvariantMatMul),
  // so a text's result is the same whether it is scored alone or in a batch.
  ScoreResult Score(std::span<const int32_t> ids);
  // Scores several texts, packing them in order into forward passes of at
  // most the planned rows per pass (a text longer than that is scored alone,
  // as Score does), so that each expert's weights stream once per pass for
  // every text in it. result[i] equals Score(texts[i]) bit for bit, except
  // that without `logits` no logits are computed (result[i].logits is empty;
  // detection needs only the routing, and the lm_head over every position is
  // the largest product of a pass with a large vocabulary). Non-finite
  // values are caught in the logits, or without them in the router logits.
  // Throws epwa::Error for an empty text or one that does not fit the plan.
  //
  // With routing_through_slot >= 0 (and no logits), each pass stops once
  // that MoE layer (an index into ModelConfig::MoeLayers) has chosen its
  // experts (Transformer::ForwardBatch): the routing up to it is exactly a
  // whole pass's, the later MoE layers' is left empty (zero logits and
  // weights, experts -1). A text too long for one pass still runs whole.
  std::vector<ScoreResult> ScoreBatch(std::span<const std::vector<int32_t>> texts, bool logits = true,
                                      int64_t routing_through_slot = -1);

 private:
  friend class BatchEngine;  // runs the shared model and its checks
  Engine() = default;
  // Throws epwa::Error naming the first layer and tensor whose output is not
  // finite when `logits` (computed for `context`) hold a NaN or infinity.
  void CheckLogits(std::span<const float> logits, std::span<const int32_t> context);
  // Throws epwa::Error if `ids` is empty or exceeds the context or the plan.
  void CheckScorable(std::span<const int32_t> ids) const;

  std::string model_dir_;
  std::unique_ptr<ThreadPool> pool_;
  std::unique_ptr<TensorStore> store_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<Transformer> model_;
  GenerationDefaults defaults_;
  LoadStats load_stats_;
  DType kv_cache_dtype_ = DType::kF32;
};

}  // namespace epwa
