#include "runtime/engine.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cmath>
#include <filesystem>
#include <limits>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "base/file_read.h"
#include "base/sysinfo.h"
#include "base/meminfo.h"
#include "base/timer.h"
#include "kernels/kernels.h"
#include "model/router_hash.h"
#include "plan/materialize.h"
#include "plan/weight_cache.h"
#include "runtime/batch_engine.h"

namespace epwa {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// Parses the text of an optional JSON file that must hold an object.
json ParseJsonObject(const std::string& text, const std::string& origin) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    // parse_error, and out_of_range for numbers such as 1e400.
    throw Error(origin + ": malformed JSON (" + std::string(e.what()) + ")");
  }
  Require(j.is_object(), origin + ": expected a JSON object");
  return j;
}

// The text of an optional file: nothing when it is absent; an error for
// anything else that is not a readable regular file (a folder, a FIFO, a huge
// file), because a generation_config.json that cannot be read would silently
// change how the model samples.
std::optional<std::string> ReadOptionalFile(const std::string& path, const std::string& what) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0 && errno == ENOENT) return std::nullopt;
  return ReadRegularFile(path, kMaxConfigFileBytes, what);
}

std::string Dump(const json& v) { return v.dump(-1, ' ', false, json::error_handler_t::replace); }

// The checks below follow what the command line flags accept, and Hugging
// Face's GenerationConfig.validate() and logits warpers where those are
// stricter, so that a value the flags would refuse cannot slip in through
// the model folder.

// A finite number (JSON integers are numbers too; true/false are not),
// checked after the conversion to float that the sampler uses, so that 1e39
// (infinity in float32) is refused as well.
std::optional<float> ReadFloat(const json& j, const char* key, const std::string& origin) {
  if (!j.contains(key) || j[key].is_null()) return std::nullopt;
  const json& v = j[key];
  Require(v.is_number(), origin + ": field '" + key + "' must be a number, not " + Dump(v));
  const double d = v.get<double>();
  Require(std::isfinite(d) && std::isfinite(static_cast<float>(d)),
          origin + ": field '" + key + "' is " + Dump(v) + ", which is not a finite float32 number");
  return static_cast<float>(d);
}

// An integer in [min_value, INT32_MAX], judged before narrowing: 2^40 is
// refused, not truncated to its low 32 bits.
std::optional<int32_t> ReadInt32(const json& j, const char* key, const std::string& origin,
                                 int64_t min_value) {
  if (!j.contains(key) || j[key].is_null()) return std::nullopt;
  const json& v = j[key];
  Require(v.is_number_integer(), origin + ": field '" + key + "' must be an integer, not " + Dump(v));
  const bool too_large = v.is_number_unsigned()
                             ? v.get<uint64_t>() > static_cast<uint64_t>(INT32_MAX)
                             : v.get<int64_t>() > INT32_MAX;
  Require(!too_large, origin + ": field '" + key + "' is " + Dump(v) +
                          ", which is too large (at most " + std::to_string(INT32_MAX) + ")");
  Require(v.get<int64_t>() >= min_value, origin + ": field '" + key + "' is " + Dump(v) +
                                             ", must be at least " + std::to_string(min_value));
  return static_cast<int32_t>(v.get<int64_t>());
}

// One token id, an integer in [0, vocab_size); a string, a float or an id
// past the vocabulary is refused rather than dropped or truncated.
int32_t ReadTokenId(const json& x, const char* key, const std::string& origin, int64_t vocab_size) {
  Require(x.is_number_integer(), origin + ": field '" + key +
                                     "' must be a token id or a list of token ids, not " + Dump(x));
  const bool negative = !x.is_number_unsigned() && x.get<int64_t>() < 0;
  Require(!negative && x.get<uint64_t>() < static_cast<uint64_t>(vocab_size),
          origin + ": field '" + key + "' has token id " + Dump(x) +
              ", which is outside the vocabulary (vocab_size " + std::to_string(vocab_size) + ")");
  return static_cast<int32_t>(x.get<int64_t>());
}

void AddIds(const json& v, const char* key, const std::string& origin, int64_t vocab_size,
            std::vector<int32_t>* ids) {
  if (v.is_null()) return;
  auto add = [&](const json& x) {
    const int32_t id = ReadTokenId(x, key, origin, vocab_size);
    if (std::find(ids->begin(), ids->end(), id) == ids->end()) ids->push_back(id);
  };
  if (v.is_array())
    for (const auto& x : v) add(x);
  else
    add(v);
}

GenerationDefaults ReadDefaults(const std::string& dir, const ModelConfig& config,
                                const Tokenizer& tokenizer) {
  GenerationDefaults d;
  d.eos_token_ids = config.eos_token_ids;
  d.bos_token_id = config.bos_token_id;
  const std::string gen_path = dir + "/generation_config.json";
  if (auto gen = ReadOptionalFile(gen_path, "the model's generation_config.json"))
    ApplyGenerationConfig(*gen, gen_path, config.vocab_size, &d);
  const std::string tc_path = dir + "/tokenizer_config.json";
  if (auto tc = ReadOptionalFile(tc_path, "the model's tokenizer_config.json"))
    ApplyTokenizerConfig(*tc, tc_path,
                         [&](const std::string& piece) { return tokenizer.PieceToId(piece); }, &d);
  for (int32_t id : d.eos_token_ids)
    Require(id >= 0 && id < config.vocab_size,
            dir + ": eos token id " + std::to_string(id) + " is outside the vocabulary");
  return d;
}

}  // namespace

void ApplyGenerationConfig(const std::string& json_text, const std::string& origin,
                           int64_t vocab_size, GenerationDefaults* d) {
  const json gen = ParseJsonObject(json_text, origin);
  // Refuses a present value of `key` unless `ok`; the message is built only
  // on failure (the field may be absent, and then must not be looked up).
  auto check = [&](const char* key, bool ok, const char* rule) {
    if (!ok) throw Error(origin + ": field '" + key + "' is " + Dump(gen.at(key)) + ", " + rule);
  };
  d->temperature = ReadFloat(gen, "temperature", origin);
  // 0 means greedy, as for --temp; below 0 has no meaning (HF refuses it).
  check("temperature", !d->temperature || *d->temperature >= 0, "must be at least 0");
  d->top_p = ReadFloat(gen, "top_p", origin);
  check("top_p", !d->top_p || (*d->top_p > 0 && *d->top_p <= 1), "must be in (0, 1]");
  d->min_p = ReadFloat(gen, "min_p", origin);
  check("min_p", !d->min_p || (*d->min_p >= 0 && *d->min_p <= 1), "must be in [0, 1]");
  d->repetition_penalty = ReadFloat(gen, "repetition_penalty", origin);
  // The penalty divides positive logits: 0 would divide by zero.
  check("repetition_penalty", !d->repetition_penalty || *d->repetition_penalty > 0,
        "must be greater than 0");
  d->top_k = ReadInt32(gen, "top_k", origin, 0);  // 0 = off, as for --top-k
  // HF's validate() refuses max_new_tokens <= 0.
  d->max_new_tokens = ReadInt32(gen, "max_new_tokens", origin, 1);
  if (gen.contains("do_sample") && !gen["do_sample"].is_null()) {
    Require(gen["do_sample"].is_boolean(),
            origin + ": field 'do_sample' must be true or false, not " + Dump(gen["do_sample"]));
    d->do_sample = gen["do_sample"].get<bool>();
  }
  if (gen.contains("eos_token_id"))
    AddIds(gen["eos_token_id"], "eos_token_id", origin, vocab_size, &d->eos_token_ids);
  if (gen.contains("bos_token_id") && !gen["bos_token_id"].is_null())
    d->bos_token_id = ReadTokenId(gen["bos_token_id"], "bos_token_id", origin, vocab_size);
}

void ApplyTokenizerConfig(const std::string& json_text, const std::string& origin,
                          const std::function<std::optional<int32_t>(const std::string&)>& piece_to_id,
                          GenerationDefaults* d) {
  const json tc = ParseJsonObject(json_text, origin);
  if (tc.contains("add_bos_token") && !tc["add_bos_token"].is_null()) {
    Require(tc["add_bos_token"].is_boolean(), origin + ": field 'add_bos_token' must be true or "
                                                       "false, not " + Dump(tc["add_bos_token"]));
    d->add_bos_token = tc["add_bos_token"].get<bool>();
  }
  // tokenizer_config.json names BOS/EOS by their text; resolve them to ids
  // when config.json did not say.
  auto token_text = [&](const char* key) -> std::string {
    if (!tc.contains(key)) return "";
    const json& v = tc[key];
    if (v.is_string()) return v.get<std::string>();
    if (v.is_object() && v.contains("content") && v["content"].is_string())
      return v["content"].get<std::string>();
    return "";
  };
  if (d->bos_token_id < 0)
    if (auto id = piece_to_id(token_text("bos_token"))) d->bos_token_id = *id;
  if (d->eos_token_ids.empty())
    if (auto id = piece_to_id(token_text("eos_token"))) d->eos_token_ids.push_back(*id);
}

int64_t DefaultPlanContext(const ModelConfig& config) {
  return std::min<int64_t>(config.ContextLimit(), 4096);
}

std::unique_ptr<Engine> Engine::Load(const LoadOptions& options) {
  Stopwatch total;
  const std::string& dir = options.model_dir;
  Require(!dir.empty(), "no model folder given (use -m MODEL_DIR or set EPW_MODEL_PATH)");
  Require(fs::exists(dir), "model folder '" + dir + "' does not exist");
  Require(fs::is_directory(dir), "'" + dir + "' is not a folder (expected a Hugging Face model folder)");

  std::unique_ptr<Engine> engine(new Engine());
  engine->model_dir_ = dir;
  LoadStats& stats = engine->load_stats_;

  Stopwatch stage;
  ModelConfig config = LoadModelConfig(dir);
  stats.config_ms = stage.Millis();

  stage.Reset();
  const std::string tok_path = dir + "/tokenizer.json";
  Require(fs::exists(tok_path), "tokenizer file " + tok_path + " is missing");
  engine->tokenizer_ = Tokenizer::FromFile(tok_path);
  Require(engine->tokenizer_->VocabSize() <= config.vocab_size,
          tok_path + ": the tokenizer has " + std::to_string(engine->tokenizer_->VocabSize()) +
              " tokens but config.json says vocab_size " + std::to_string(config.vocab_size));
  engine->defaults_ = ReadDefaults(dir, config, *engine->tokenizer_);
  stats.tokenizer_ms = stage.Millis();

  stage.Reset();
  engine->store_ = TensorStore::OpenDir(dir);
  ModelWeights weights = BindWeights(config, *engine->store_, &stats.warnings);
  stats.weight_bytes = engine->store_->TotalBytes();
  // More threads than the hardware threads this process may use only add
  // scheduling delays to every parallel region (-t 1024 on two cores took a
  // minute for four tokens), so the count is capped, with a warning.
  int threads = options.threads;
  const int hardware = ThreadPool::HardwareThreads();
  if (threads > hardware) {
    stats.warnings.push_back(std::to_string(threads) + " threads were asked for, but this process " +
                             "may run on only " + std::to_string(hardware) +
                             " hardware threads; using " + std::to_string(hardware));
    threads = hardware;
  }
  engine->pool_ = std::make_unique<ThreadPool>(threads);
  stats.weights_ms = stage.Millis();

  // Plan memory with what is resident now (binary, libraries, tokenizer,
  // headers) as the runtime baseline, then convert to the chosen formats.
  stage.Reset();
  PlanContext pc;
  pc.device = Device::kCpu;
  pc.ctx = options.plan_ctx > 0 ? options.plan_ctx : DefaultPlanContext(config);
  Require(options.parallel >= 1, "--parallel must be at least 1 sequence");
  Require(options.batch_tokens >= 0, "--batch-tokens must not be negative");
  pc.parallel = options.parallel;
  pc.batch_tokens = options.batch_tokens > 0 ? options.batch_tokens : pc.ctx;
  pc.threads = engine->pool_->size();
  pc.int8_lm_head = options.int8_lm_head;
  pc.copy_weights = options.copy_weights;
  pc.kv_cache = options.kv_cache;
  engine->kv_cache_dtype_ = options.kv_cache;
  pc.runtime_bytes = CurrentRssBytes();
  pc.vector_bytes = weights.converted_bytes;
  const uint64_t budget = options.mem_budget_bytes
                              ? *options.mem_budget_bytes
                              : ProbeHostMemory().free_bytes + CurrentRssBytes();
  std::vector<MatrixSlot> slots = ListMatrices(config, weights);
  const LevelPlan plan = ChooseLevel(config, slots, options.quant, pc, budget);
  stats.plan_ms = stage.Millis();
  stats.quant_level = QuantLevelName(plan.level);
  stats.quant_source = options.quant_source;
  stats.planned_bytes = plan.ExpectedBytes();
  stats.budget_bytes = budget;
  stats.plan_ctx = pc.ctx;
  stats.plan_parallel = pc.parallel;
  stats.plan_batch_tokens = pc.batch_tokens;

  // The quantized-weight cache: a valid file replaces quantizing; a missing
  // one is written after quantizing; a corrupt one is reported and rebuilt.
  stage.Reset();
  std::string model_id, cache_path;
  bool cache_hit = false;
  stats.cache = "off";
  if (options.use_cache) {
    model_id = ModelIdentity(dir, *engine->store_);
    cache_path = CacheFilePath(options.cache_dir.empty() ? DefaultCacheDir() : options.cache_dir,
                               model_id, plan.level, plan.tensors);
    stats.cache = "not used (nothing is quantized)";
  }
  if (!cache_path.empty()) {
    stats.cache_path = cache_path;
    std::string why;
    cache_hit = LoadWeightCache(cache_path, model_id, config, weights, plan.tensors, &why);
    if (cache_hit) {
      stats.cache = "hit";
    } else if (why != "no cache file yet") {
      stats.warnings.push_back("weight cache " + cache_path + " is invalid (" + why +
                               "); rebuilding it");
      std::error_code ec;
      fs::remove(cache_path, ec);
    }
  }
  stats.cache_ms = stage.Millis();

  stage.Reset();
  const MaterializeStats materialized =
      MaterializeWeights(config, weights, plan.tensors, *engine->pool_, options.progress, options.copy_weights);
  stats.copied_bytes = materialized.copied_bytes;
  stats.kv_cache = KvCacheTypeName(options.kv_cache);
  stats.quantize_ms = stage.Millis();
  if (!cache_path.empty() && !cache_hit) {
    Stopwatch write;
    try {
      WriteWeightCache(cache_path, model_id, config, weights, plan.tensors);
      stats.cache = "written";
    } catch (const std::exception& e) {
      stats.cache = "not written";
      stats.warnings.push_back(std::string("could not write the weight cache: ") + e.what());
    }
    stats.cache_ms += write.Millis();
  }
  stats.mapped_bytes = weights.mapped_bytes;
  stats.converted_bytes = weights.converted_bytes;
  // IRSH over the checkpoint's routers: the same whatever the level.
  stage.Reset();
  if (config.IsMoe()) stats.router_hash = RouterHash(config, *engine->store_);
  stats.router_hash_ms = stage.Millis();
  engine->model_ = std::make_unique<Transformer>(std::move(config), std::move(weights), *engine->pool_);

  stats.total_ms = total.Millis();
  stats.peak_rss_bytes = PeakRssBytes();
  return engine;
}

std::vector<int32_t> Engine::EncodePrompt(const std::string& text) const {
  // No token covers more than MaxTokenBytes() bytes of input, so a text
  // longer than context x that can never fit: refuse it before tokenizing,
  // which on megabytes of hostile text costs far more than the refusal.
  const size_t per_token = tokenizer_->MaxTokenBytes();
  const uint64_t context = static_cast<uint64_t>(max_context());
  if (per_token != SIZE_MAX && per_token > 0 && context <= UINT64_MAX / per_token &&
      text.size() > context * per_token) {
    throw Error("the text is " + std::to_string(text.size()) + " bytes; no token of this model covers more than " +
                std::to_string(per_token) + " bytes, so it needs more than " +
                std::to_string(text.size() / per_token) + " tokens and cannot fit the model's context of " +
                std::to_string(context) + " tokens");
  }
  std::vector<int32_t> ids = tokenizer_->Encode(text, /*add_special_tokens=*/true);
  if (defaults_.add_bos_token && defaults_.bos_token_id >= 0 &&
      (ids.empty() || ids.front() != defaults_.bos_token_id))
    ids.insert(ids.begin(), defaults_.bos_token_id);
  return ids;
}

void Engine::ValidatePrompt(std::span<const int32_t> prompt) const {
  Require(!prompt.empty(), "the prompt is empty: give at least one token of text");
  Require(static_cast<int64_t>(prompt.size()) < max_context(),
          "the prompt has " + std::to_string(prompt.size()) +
              " tokens, which does not fit the model's context of " +
              std::to_string(max_context()) + " tokens");
}

GenerateResult Engine::Generate(std::span<const int32_t> prompt, const GenerateOptions& options) {
  // The one-sequence case of the batch loop: the same checks, forward passes
  // and sampling as a sequence among many, with no other rows in its steps.
  BatchEngine batch(*this, BatchOptions{.parallel = 1, .batch_tokens = 0});
  SequenceResult done;
  batch.Submit(prompt, options, [&done](SequenceResult&& r) { done = std::move(r); });
  batch.RunUntilIdle();
  if (done.error) std::rethrow_exception(done.error);
  return GenerateResult{std::move(done.tokens), std::move(done.stats)};
}

void Engine::CheckScorable(std::span<const int32_t> ids) const {
  Require(!ids.empty(), "nothing to score: the text has no tokens");
  Require(static_cast<int64_t>(ids.size()) <= max_context(),
          "the text has " + std::to_string(ids.size()) + " tokens, more than the model's context of " +
              std::to_string(max_context()));
  Require(static_cast<int64_t>(ids.size()) <= load_stats_.plan_ctx,
          "the text has " + std::to_string(ids.size()) + " tokens, but memory was planned for " +
              std::to_string(load_stats_.plan_ctx) + " (raise it with --ctx " +
              std::to_string(ids.size()) + ")");
}

ScoreResult Engine::Score(std::span<const int32_t> ids) {
  CheckScorable(ids);
  ScoreResult result;
  result.ids.assign(ids.begin(), ids.end());
  const int64_t T = static_cast<int64_t>(ids.size());
  const kernels::ScopedRowInvariantMatMul row_invariant;
  KVCache cache(config(), T, kv_cache_dtype_);
  // One pass when the text fits the planned rows per pass (always, unless
  // --batch-tokens made them fewer than the context); else chunks of that
  // many rows, whose logits and routing are gathered in order.
  const int64_t chunk = std::max<int64_t>(load_stats_.plan_batch_tokens, 1);
  if (T <= chunk) {
    model_->Forward(ids, 0, cache, /*all_logits=*/true, &result.logits, &result.routing);
  } else {
    const ModelConfig& c = config();
    const std::vector<int32_t> moe_layers = c.MoeLayers();
    result.routing.Reset(T, 0, moe_layers, c.num_experts, c.num_experts_per_tok);
    result.logits.resize(static_cast<size_t>(T * c.vocab_size));
    std::vector<float> logits;
    RoutingTrace part;
    for (int64_t start = 0; start < T; start += chunk) {
      const int64_t n = std::min(chunk, T - start);
      model_->Forward(ids.subspan(static_cast<size_t>(start), static_cast<size_t>(n)), start, cache,
                      /*all_logits=*/true, &logits, &part);
      std::copy(logits.begin(), logits.end(), result.logits.begin() + start * c.vocab_size);
      for (int64_t t = 0; t < n; ++t)
        for (int64_t m = 0; m < part.num_moe_layers(); ++m) {
          std::ranges::copy(part.Logits(t, m), result.routing.MutableLogits(start + t, m));
          std::ranges::copy(part.Experts(t, m), result.routing.MutableExperts(start + t, m));
          std::ranges::copy(part.Weights(t, m), result.routing.MutableWeights(start + t, m));
        }
    }
  }
  CheckLogits(result.logits, ids);
  return result;
}

std::vector<ScoreResult> Engine::ScoreBatch(std::span<const std::vector<int32_t>> texts, bool logits,
                                           int64_t routing_through_slot) {
  for (const std::vector<int32_t>& ids : texts) CheckScorable(ids);
  Require(routing_through_slot < config().NumMoeLayers(),
          "internal: routing_through_slot " + std::to_string(routing_through_slot) + " is not an MoE layer of the model");
  if (logits) routing_through_slot = -1;
  const kernels::ScopedRowInvariantMatMul row_invariant;
  const ModelConfig& c = config();
  // The plan holds this many rows (and as many cached positions) per pass.
  const int64_t budget = std::max<int64_t>(load_stats_.plan_batch_tokens, 1);
  std::vector<ScoreResult> results(texts.size());
  std::vector<float> out;
  size_t i = 0;
  while (i < texts.size()) {
    if (static_cast<int64_t>(texts[i].size()) > budget) {
      results[i] = Score(texts[i]);
      if (!logits) results[i].logits.clear();
      ++i;
      continue;
    }
    // The texts of this pass: [i, end).
    size_t end = i;
    int64_t rows = 0;
    while (end < texts.size() && rows + static_cast<int64_t>(texts[end].size()) <= budget)
      rows += static_cast<int64_t>(texts[end++].size());
    std::vector<std::unique_ptr<KVCache>> caches;
    std::vector<BatchSegment> segments;
    for (size_t k = i; k < end; ++k) {
      results[k].ids = texts[k];
      caches.push_back(std::make_unique<KVCache>(c, static_cast<int64_t>(texts[k].size()), kv_cache_dtype_));
      segments.push_back(BatchSegment{.tokens = texts[k],
                                      .start_pos = 0,
                                      .cache = caches.back().get(),
                                      .logits = logits ? LogitRows::kAll : LogitRows::kNone,
                                      .trace = &results[k].routing});
    }
    model_->ForwardBatch(segments, &out, routing_through_slot);
    int64_t row = 0;
    for (size_t k = i; k < end; ++k) {
      ScoreResult& r = results[k];
      if (logits) {
        const int64_t n = static_cast<int64_t>(texts[k].size()) * c.vocab_size;
        r.logits.assign(out.begin() + row, out.begin() + row + n);
        row += n;
        CheckLogits(r.logits, r.ids);
      } else {
        bool finite = true;
        for (int64_t t = 0; t < r.routing.num_tokens() && finite; ++t)
          for (int64_t m = 0; m < r.routing.num_moe_layers() && finite; ++m) {
            const std::span<const float> l = r.routing.Logits(t, m);
            finite = AllFinite(l.data(), l.size());
          }
        // The same diagnosis as for non-finite logits: a checked re-run
        // names the first layer and tensor that produced the value.
        if (!finite) CheckLogits(std::vector<float>{std::numeric_limits<float>::quiet_NaN()}, r.ids);
      }
    }
    i = end;
  }
  return results;
}

void Engine::CheckLogits(std::span<const float> logits, std::span<const int32_t> context) {
  // V values per step: negligible next to the forward pass that made them,
  // and the only place that sees every kind of damage (NaN or infinite
  // weights that are used in place, overflow of finite weights at run time)
  // before it turns into garbage text or null perplexities.
  if (AllFinite(logits.data(), logits.size())) return;
  const std::string where = model_->LocateNonFinite(context);
  throw Error("the model computed non-finite logits (NaN or infinity) for a " +
              std::to_string(context.size()) + "-token sequence: " +
              (where.empty() ? std::string("a checked re-run did not reproduce it")
                             : "the first non-finite value comes from " + where) +
              "; the weights in '" + model_dir_ + "' are damaged or overflow float32");
}

GenerateOptions DefaultGenerateOptions(const GenerationDefaults& d, int32_t default_max_tokens) {
  GenerateOptions o;
  o.max_new_tokens = d.max_new_tokens.value_or(default_max_tokens);
  SamplerParams& s = o.sampler;
  if (d.do_sample.has_value() && !*d.do_sample) s.temperature = 0.0f;
  else if (d.temperature) s.temperature = *d.temperature;
  if (d.top_k) s.top_k = *d.top_k;
  if (d.top_p) s.top_p = *d.top_p;
  if (d.min_p) s.min_p = *d.min_p;
  if (d.repetition_penalty) s.repeat_penalty = *d.repetition_penalty;
  return o;
}

nlohmann::json LoadStatsJson(const LoadStats& s) {
  return nlohmann::json{{"config_ms", s.config_ms},         {"tokenizer_ms", s.tokenizer_ms},
                        {"weights_ms", s.weights_ms},       {"plan_ms", s.plan_ms},
                        {"quantize_ms", s.quantize_ms},     {"router_hash_ms", s.router_hash_ms},
                        {"total_ms", s.total_ms},           {"weight_bytes", s.weight_bytes},
                        {"mapped_bytes", s.mapped_bytes},   {"converted_bytes", s.converted_bytes},
                        {"copied_bytes", s.copied_bytes},
                        {"kv_cache", s.kv_cache},
                        {"peak_rss_bytes", s.peak_rss_bytes}, {"quant_level", s.quant_level},
                        {"quant_source", s.quant_source},   {"planned_bytes", s.planned_bytes},
                        {"budget_bytes", s.budget_bytes},   {"plan_ctx", s.plan_ctx},
                        {"plan_parallel", s.plan_parallel}, {"plan_batch_tokens", s.plan_batch_tokens},
                        {"router_hash", s.router_hash},     {"cache", s.cache},
                        {"cache_path", s.cache_path},
                        {"cache_ms", s.cache_ms},           {"warnings", s.warnings}};
}

nlohmann::json GenerateStatsJson(const GenerateStats& s) {
  return nlohmann::json{{"prompt_tokens", s.prompt_tokens},
                        {"generated_tokens", s.generated_tokens},
                        {"prefill_ms", s.prefill_ms},
                        {"decode_ms", s.decode_ms},
                        {"prefill_tokens_per_s", s.prefill_tokens_per_s},
                        {"decode_tokens_per_s", s.decode_tokens_per_s},
                        {"stop_reason", s.stop_reason}};
}

}  // namespace epwa
