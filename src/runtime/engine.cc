#include "runtime/engine.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "base/sysinfo.h"
#include "base/meminfo.h"
#include "base/timer.h"
#include "model/router_hash.h"
#include "plan/materialize.h"
#include "plan/weight_cache.h"

namespace epwa {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// Optional JSON file: returns null when absent, throws on malformed content.
json ReadOptionalJson(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in.good()) return nullptr;
  std::stringstream ss;
  ss << in.rdbuf();
  try {
    json j = json::parse(ss.str());
    Require(j.is_object(), path + ": expected a JSON object");
    return j;
  } catch (const json::parse_error& e) {
    throw Error(path + ": malformed JSON (" + std::string(e.what()) + ")");
  }
}

template <typename T>
void ReadField(const json& j, const char* key, const std::string& origin, std::optional<T>* out) {
  if (!j.contains(key) || j[key].is_null()) return;
  try {
    *out = j[key].get<T>();
  } catch (const json::exception&) {
    throw Error(origin + ": field '" + key + "' has the wrong type");
  }
}

void AddIds(const json& v, std::vector<int32_t>* ids) {
  auto add = [&](const json& x) {
    if (!x.is_number_integer()) return;
    int32_t id = x.get<int32_t>();
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
  json gen = ReadOptionalJson(gen_path);
  if (!gen.is_null()) {
    ReadField(gen, "temperature", gen_path, &d.temperature);
    ReadField(gen, "top_p", gen_path, &d.top_p);
    ReadField(gen, "min_p", gen_path, &d.min_p);
    ReadField(gen, "repetition_penalty", gen_path, &d.repetition_penalty);
    ReadField(gen, "top_k", gen_path, &d.top_k);
    ReadField(gen, "max_new_tokens", gen_path, &d.max_new_tokens);
    ReadField(gen, "do_sample", gen_path, &d.do_sample);
    if (gen.contains("eos_token_id")) AddIds(gen["eos_token_id"], &d.eos_token_ids);
    if (gen.contains("bos_token_id") && gen["bos_token_id"].is_number_integer())
      d.bos_token_id = gen["bos_token_id"].get<int32_t>();
  }
  const std::string tc_path = dir + "/tokenizer_config.json";
  json tc = ReadOptionalJson(tc_path);
  if (!tc.is_null()) {
    if (tc.contains("add_bos_token") && tc["add_bos_token"].is_boolean())
      d.add_bos_token = tc["add_bos_token"].get<bool>();
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
    if (d.bos_token_id < 0)
      if (auto id = tokenizer.PieceToId(token_text("bos_token"))) d.bos_token_id = *id;
    if (d.eos_token_ids.empty())
      if (auto id = tokenizer.PieceToId(token_text("eos_token"))) d.eos_token_ids.push_back(*id);
  }
  for (int32_t id : d.eos_token_ids)
    Require(id >= 0 && id < config.vocab_size,
            dir + ": eos token id " + std::to_string(id) + " is outside the vocabulary");
  return d;
}

}  // namespace

int64_t DefaultPlanContext(const ModelConfig& config) {
  return std::min<int64_t>(config.max_position_embeddings, 4096);
}

std::unique_ptr<Engine> Engine::Load(const LoadOptions& options) {
  Stopwatch total;
  const std::string& dir = options.model_dir;
  Require(!dir.empty(), "no model folder given (use -m MODEL_DIR or set EPW_MODEL_PATH)");
  Require(fs::exists(dir), "model folder '" + dir + "' does not exist");
  Require(fs::is_directory(dir), "'" + dir + "' is not a folder (expected a Hugging Face model folder)");

  std::unique_ptr<Engine> engine(new Engine());
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
  ModelWeights weights = BindWeights(config, *engine->store_);
  stats.weight_bytes = engine->store_->TotalBytes();
  engine->pool_ = std::make_unique<ThreadPool>(options.threads);
  stats.weights_ms = stage.Millis();

  // Plan memory with what is resident now (binary, libraries, tokenizer,
  // headers) as the runtime baseline, then convert to the chosen formats.
  stage.Reset();
  PlanContext pc;
  pc.device = Device::kCpu;
  pc.ctx = options.plan_ctx > 0 ? options.plan_ctx : DefaultPlanContext(config);
  pc.threads = engine->pool_->size();
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
  MaterializeWeights(config, weights, plan.tensors, *engine->pool_, options.progress);
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
  ValidatePrompt(prompt);
  Require(options.max_new_tokens >= 0, "the number of tokens to generate must not be negative");
  const int64_t needed = static_cast<int64_t>(prompt.size()) + options.max_new_tokens;
  const int64_t capacity = std::min<int64_t>(needed, max_context());
  Require(capacity <= load_stats_.plan_ctx,
          "the prompt (" + std::to_string(prompt.size()) + " tokens) plus " +
              std::to_string(options.max_new_tokens) + " new tokens needs a context of " +
              std::to_string(capacity) + " tokens, but memory was planned for " +
              std::to_string(load_stats_.plan_ctx) + " (raise it with --ctx " +
              std::to_string(capacity) + ")");

  GenerateResult result;
  GenerateStats& stats = result.stats;
  stats.prompt_tokens = static_cast<int64_t>(prompt.size());
  KVCache cache(config(), capacity);
  Sampler sampler(options.sampler);
  std::vector<int32_t> context(prompt.begin(), prompt.end());
  std::vector<float> logits;
  RoutingTrace routing;

  Stopwatch clock;
  model_->Forward(prompt, 0, cache, /*all_logits=*/false, &logits, &routing);
  stats.prefill_ms = clock.Millis();
  stats.stop_reason = "length";
  clock.Reset();
  for (int32_t step = 0; step < options.max_new_tokens; ++step) {
    if (static_cast<int64_t>(context.size()) >= capacity) {
      stats.stop_reason = "context";
      break;
    }
    if (options.logits_processor) options.logits_processor(logits, routing, context);
    const int32_t token = sampler.Sample(logits, context);
    context.push_back(token);
    result.tokens.push_back(token);
    const bool is_eos = !options.ignore_eos && std::find(defaults_.eos_token_ids.begin(), defaults_.eos_token_ids.end(),
                                  token) != defaults_.eos_token_ids.end();
    if (options.on_token && !options.on_token(token)) {
      stats.stop_reason = "callback";
      break;
    }
    if (is_eos) {
      stats.stop_reason = "eos";
      break;
    }
    if (step + 1 == options.max_new_tokens) break;  // no forward pass for an unused token
    const int32_t last[1] = {token};
    model_->Forward(last, static_cast<int64_t>(context.size()) - 1, cache, false, &logits, &routing);
  }
  stats.decode_ms = clock.Millis();
  stats.generated_tokens = static_cast<int64_t>(result.tokens.size());
  stats.prefill_tokens_per_s = stats.prompt_tokens / std::max(stats.prefill_ms / 1e3, 1e-9);
  // Decode speed counts the forward passes that decode ran: one per generated
  // token after the first (the first token's logits came from prefill).
  const int64_t decode_passes = std::max<int64_t>(stats.generated_tokens - 1, 0);
  stats.decode_tokens_per_s =
      decode_passes > 0 ? decode_passes / std::max(stats.decode_ms / 1e3, 1e-9) : 0.0;
  return result;
}

ScoreResult Engine::Score(std::span<const int32_t> ids) {
  Require(!ids.empty(), "nothing to score: the text has no tokens");
  Require(static_cast<int64_t>(ids.size()) <= max_context(),
          "the text has " + std::to_string(ids.size()) + " tokens, more than the model's context of " +
              std::to_string(max_context()));
  Require(static_cast<int64_t>(ids.size()) <= load_stats_.plan_ctx,
          "the text has " + std::to_string(ids.size()) + " tokens, but memory was planned for " +
              std::to_string(load_stats_.plan_ctx) + " (raise it with --ctx " +
              std::to_string(ids.size()) + ")");
  ScoreResult result;
  result.ids.assign(ids.begin(), ids.end());
  KVCache cache(config(), static_cast<int64_t>(ids.size()));
  model_->Forward(ids, 0, cache, /*all_logits=*/true, &result.logits, &result.routing);
  return result;
}

}  // namespace epwa
