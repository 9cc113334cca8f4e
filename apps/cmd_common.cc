#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <iostream>
#include <sstream>

#include "base/error.h"
#include "base/file_read.h"
#include "base/text.h"
#include "base/timer.h"
#include "cli.h"
#include "kernels/kernels.h"

namespace epwa::cli {

void AddModelFlags(CLI::App* cmd, ModelFlags* flags) {
  cmd->add_option("-m,--model", flags->model_dir,
                  "Hugging Face model folder (default: $EPW_MODEL_PATH)")
      ->envname("EPW_MODEL_PATH");
  cmd->add_option("-t,--threads", flags->threads, "worker threads (default: all cores)")
      ->check(CLI::Range(0, 1024));
  cmd->add_option("--quant", flags->quant,
                  "weight precision: auto (default: the least lossy that fits), none, fp16, "
                  "int8, int4 or mixed; overrides EPW_LOAD_IN_4BIT / EPW_LOAD_IN_8BIT / "
                  "EPW_FAST_LOADING");
  cmd->add_option("--ctx", flags->ctx,
                  "context (prompt + generated tokens) the memory plan must hold "
                  "(default: max_position_embeddings, at most 4096)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 24));
  cmd->add_flag("--no-cache", flags->no_cache,
                "do not read or write the quantized-weight cache ($EPWA_CACHE_DIR, else "
                "~/.cache/epwa)");
  cmd->add_flag("--no-mmap", flags->no_mmap,
                "copy the weights that would be read from the mapped files (16-bit matrices, "
                "weight-cache hits) into this process's memory at load: not shared with other "
                "processes nor dropped under memory pressure, but faster to read where the page "
                "cache is slow (README, Speed); also EPW_NO_MMAP=1");
  cmd->add_option("--mem-budget", flags->mem_budget,
                  "memory the process may use, e.g. 512M or 6G (default: free memory)");
  cmd->add_flag("--float-activations", flags->float_activations,
                "multiply int8/int4/MXFP4 weights with float32 activations (exact against the "
                "dequantized weights; default: activations rounded to int8 per group of 32, at decode "
                "and prefill, for integer dot products: faster)");
  cmd->add_flag("--bf16-activations", flags->bf16_activations,
                "prefill with BF16 weights rounds activations to bf16 for AVX512-BF16 dot products, "
                "or on CPUs with AMX the tile unit (1.3x to 3x the float32 prefill; logits move "
                "slightly, see the README; EPWA_AMX=0 keeps the tile unit off; default: float32)");
  cmd->add_flag("--split-activations", flags->split_activations,
                "prefill with BF16 weights on CPUs with AMX (and AVX512-BF16) splits each float32 "
                "activation into three bf16 parts for the tile unit: float32's products exactly, summed "
                "in the tile unit's order (about 2x the float32 prefill; logits and routing in the "
                "README); results differ in their last bits from CPUs without AMX, so off by default; "
                "elsewhere the float32 prefill runs");
  cmd->add_flag("--int8-lm-head", flags->int8_lm_head,
                "at int8/int4/mixed, store an untied lm_head as int8 instead of 16-bit: on large "
                "vocabularies the largest matrix a decode step reads (logits move slightly, see the README)");
  cmd->add_option("--kv-cache", flags->kv_cache,
                  "element type of the KV cache: f32 (default), f16 or bf16. 16 bits halve the cache's "
                  "memory and what attention reads per token; logits move slightly (README, Speed)")
      ->envname("EPW_KV_CACHE");
}

DType KvCacheType(const ModelFlags& flags) { return ParseKvCacheType(flags.kv_cache); }

void AddBatchFlags(CLI::App* cmd, ModelFlags* flags) {
  cmd->add_option("--parallel", flags->parallel,
                  "sequences generated together; the memory plan holds a --ctx KV cache for each "
                  "(default 1)")
      ->check(CLI::Range(1, 4096));
  cmd->add_option("--batch-tokens", flags->batch_tokens,
                  "rows per forward pass: decode rows plus prompt chunks, so a long prompt does "
                  "not stall the others (default: --ctx, a whole prompt at once)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 24));
}

uint64_t ParseByteSize(const std::string& text, const std::string& flag) {
  size_t used = 0;
  double v = -1;
  try {
    v = std::stod(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  std::string unit = text.substr(used);
  for (auto& ch : unit) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
  if (!unit.empty() && unit.back() == 'B') unit.pop_back();
  if (unit.size() == 2 && unit[1] == 'I') unit.pop_back();  // KiB, MiB, GiB: binary anyway
  double scale = 0;
  if (unit.empty()) scale = 1;
  else if (unit == "K") scale = 1024.0;
  else if (unit == "M") scale = 1024.0 * 1024;
  else if (unit == "G") scale = 1024.0 * 1024 * 1024;
  else if (unit == "T") scale = 1024.0 * 1024 * 1024 * 1024;
  Require(used > 0 && scale > 0 && v > 0 && v * scale < 1.8e19,
          flag + " expects a positive size such as 1500000000, 512M or 6G, got '" + text + "'");
  return static_cast<uint64_t>(v * scale);
}

// EPWA_ISA=avx2 (or scalar) runs a slower instruction-set path than the
// CPU's best: to see what a machine without AVX-512 would get, or to compare
// the paths on one model. A path this CPU lacks is an error, not a fallback.
void ApplyIsaOverride() {
  const char* value = std::getenv("EPWA_ISA");
  if (value == nullptr || *value == '\0') return;
  kernels::SetActiveIsa(value, "EPWA_ISA");
}

void ApplyKernelFlags(const ModelFlags& flags) {
  ApplyIsaOverride();
  if (flags.float_activations) kernels::SetFloatActivations(true);
  if (flags.bf16_activations) kernels::SetBf16Activations(true);
  if (flags.split_activations) kernels::SetSplitBf16Activations(true);
}

std::unique_ptr<Engine> LoadEngine(const ModelFlags& flags, bool quiet) {
  ApplyKernelFlags(flags);
  LoadOptions o;
  o.model_dir = flags.model_dir;
  o.threads = flags.threads;
  const LevelRequest level = ResolveLevel(flags.quant, [](const char* n) { return std::getenv(n); });
  EnvForcesCpu([](const char* n) { return std::getenv(n); });  // validates EPW_USE_CPU
  o.quant = level.level;
  o.quant_source = level.source;
  o.plan_ctx = flags.ctx;
  o.parallel = flags.parallel;
  o.batch_tokens = flags.batch_tokens;
  o.use_cache = !flags.no_cache;
  o.copy_weights = CopyWeightsRequested(flags.no_mmap, [](const char* n) { return std::getenv(n); });
  o.int8_lm_head = flags.int8_lm_head;
  o.kv_cache = KvCacheType(flags);
  if (flags.mem_budget) o.mem_budget_bytes = ParseByteSize(*flags.mem_budget, "--mem-budget");
  const bool tty = !quiet && isatty(2);
  if (tty) {
    // A progress line for conversions that take more than a second.
    auto start = std::make_shared<Stopwatch>();
    o.progress = [start](uint64_t done, uint64_t total) {
      if (start->Millis() < 1000 && done < total) return;
      std::fprintf(stderr, "\rconverting weights: %3.0f%% (%.0f / %.0f MB)", 100.0 * done / total,
                   done / 1e6, total / 1e6);
      if (done == total) std::fprintf(stderr, "\n");
    };
  }
  auto engine = Engine::Load(o);
  if (!quiet) PrintLoadStats(engine->load_stats());
  return engine;
}

std::vector<int32_t> ParseIdList(const std::string& text, const std::string& flag) {
  std::vector<int32_t> ids;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    size_t used = 0;
    long long v = -1;
    try {
      v = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    while (used < item.size() && std::isspace(static_cast<unsigned char>(item[used]))) ++used;
    Require(used == item.size() && !item.empty() && v >= 0 && v < (1ll << 31),
            flag + " expects comma-separated non-negative token ids, got '" + item + "'");
    ids.push_back(static_cast<int32_t>(v));
  }
  Require(!ids.empty(), flag + " expects at least one token id");
  return ids;
}

std::string ReadTextFile(const std::string& path, const std::string& what) {
  // A prompt or text never usefully exceeds the model's context, so the
  // limit turns /dev/zero, a FIFO or a folder into an immediate clear error
  // instead of a hang or an out-of-memory end.
  return ReadRegularFile(path, kMaxTextInputBytes, what);
}

CLI::Validator Uint64Number() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        // CLI11 reads unsigned options with strtoull, which clamps values past
        // 2^64-1 to 2^64-1 and accepts "-1" as 2^64-1; a seed that silently
        // becomes another seed defeats the point of giving one.
        errno = 0;
        char* end = nullptr;
        const bool digits = !text.empty() && std::all_of(text.begin(), text.end(), [](char c) {
          return c >= '0' && c <= '9';
        });
        unsigned long long v = 0;
        if (digits) v = std::strtoull(text.c_str(), &end, 10);
        if (!digits || errno == ERANGE || end != text.c_str() + text.size())
          return "must be a whole number from 0 to 18446744073709551615, not " + text;
        // CLI11 converts with base 0, which would read "010" as octal 8.
        text = std::to_string(v);
        return std::string();
      },
      "UINT64");
}

void PrintLoadStats(const LoadStats& s) {
  for (const std::string& w : s.warnings) std::fprintf(stderr, "epwa: warning: %s\n", w.c_str());
  const std::string sequences =
      s.plan_parallel > 1 ? " x " + std::to_string(s.plan_parallel) + " sequences" : "";
  const std::string kv = s.kv_cache == "f32" ? "" : " (" + s.kv_cache + " KV cache)";
  std::fprintf(stderr, "quant: %s (decided by %s); plan %s for a %lld-token context%s%s, budget %s\n",
               s.quant_level.c_str(), s.quant_source.c_str(), FormatBytes(s.planned_bytes).c_str(),
               static_cast<long long>(s.plan_ctx), sequences.c_str(), kv.c_str(), FormatBytes(s.budget_bytes).c_str());
  std::fprintf(stderr,
               "load: tokenizer %.1f ms, config %.1f ms, weights %.1f ms (%.1f MB mapped in place, "
               "%.2f MB converted%s), plan %.1f ms, %s %.1f ms, cache %.1f ms (%s), "
               "router hash %.1f ms, total %.1f ms, peak RSS %.1f MB\n",
               s.tokenizer_ms, s.config_ms, s.weights_ms, s.mapped_bytes / 1e6,
               s.converted_bytes / 1e6,
               s.copied_bytes > 0 ? (" or copied, " + FormatBytes(s.copied_bytes) + " of them copied out of the mapping").c_str() : "",
               // With --no-mmap the stage also copies matrices out of the
               // mapping, which on a weight-cache hit is all it does.
               s.plan_ms, s.copied_bytes > 0 ? "quantize/copy" : "quantize", s.quantize_ms, s.cache_ms, s.cache.c_str(),
               s.router_hash_ms, s.total_ms, s.peak_rss_bytes / 1e6);
}

void PrintJson(const json& j, bool one_line) {
  std::cout << j.dump(one_line ? -1 : 2, ' ', false, json::error_handler_t::replace) << "\n";
  std::cout.flush();
}

void AddSamplingFlags(CLI::App* cmd, SamplingFlags* f, int32_t default_max_tokens) {
  cmd->add_option("-n,--max-tokens", f->max_new_tokens,
                  "tokens to generate (default " + std::to_string(default_max_tokens) + ")")
      ->check(CLI::Range(0, 1 << 20));
  cmd->add_option("--temp,--temperature", f->temperature, "sampling temperature; 0 = greedy")
      ->check(FiniteNumber() & CLI::Range(0.0f, 100.0f));
  cmd->add_option("--top-k", f->top_k, "keep the k most likely tokens; 0 = off")->check(CLI::Range(0, 1 << 30));
  cmd->add_option("--top-p", f->top_p, "nucleus sampling mass in (0, 1]; 1 = off")
      ->check(FiniteNumber() & CLI::Range(1e-6f, 1.0f));
  cmd->add_option("--min-p", f->min_p, "drop tokens below min-p x the top probability; 0 = off")
      ->check(FiniteNumber() & CLI::Range(0.0f, 1.0f));
  cmd->add_option("--repeat-penalty", f->repeat_penalty, "repetition penalty; 1 = off")
      ->check(FiniteNumber() & CLI::Range(0.01f, 100.0f));
  cmd->add_option("--repeat-last-n", f->repeat_last_n, "tokens the repetition penalty looks back at")
      ->check(CLI::Range(0, 1 << 20));
  cmd->add_option("--seed", f->seed, "seed of the sampler's PRNG (xoshiro256**)")->transform(Uint64Number());
  cmd->add_flag("--ignore-eos", f->ignore_eos, "keep generating past end-of-sequence tokens");
}

GenerateOptions MakeGenerateOptions(const SamplingFlags& f, const Engine& engine, int32_t default_max_tokens) {
  GenerateOptions o = DefaultGenerateOptions(engine.defaults(), default_max_tokens);
  if (f.max_new_tokens) o.max_new_tokens = *f.max_new_tokens;
  SamplerParams& s = o.sampler;
  if (f.temperature) s.temperature = *f.temperature;
  if (f.top_k) s.top_k = *f.top_k;
  if (f.top_p) s.top_p = *f.top_p;
  if (f.min_p) s.min_p = *f.min_p;
  if (f.repeat_penalty) s.repeat_penalty = *f.repeat_penalty;
  s.repeat_last_n = f.repeat_last_n;
  s.seed = f.seed;
  o.ignore_eos = f.ignore_eos;
  return o;
}

json SamplerJson(const SamplerParams& s) {
  return json{{"temperature", s.temperature}, {"top_k", s.top_k},   {"top_p", s.top_p},
              {"min_p", s.min_p},             {"repeat_penalty", s.repeat_penalty},
              {"repeat_last_n", s.repeat_last_n}, {"seed", s.seed}};
}

nlohmann::ordered_json ParseOrderedJson(const std::string& text, const std::string& what) {
  try {
    return nlohmann::ordered_json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    std::string message = e.what();
    // nlohmann's messages start with "[json.exception.parse_error.101] ".
    if (const size_t bracket = message.find("] "); bracket != std::string::npos) message = message.substr(bracket + 2);
    throw Error(what + " is not valid JSON: " + message);
  }
}

nlohmann::ordered_json ReadOrderedJsonFile(const std::string& path, const std::string& flag) {
  const std::string what = "the " + flag + " file " + path;
  return ParseOrderedJson(ReadRegularFile(path, kMaxTextInputBytes, what), what);
}

nlohmann::ordered_json ParseKwargs(const std::string& text_or_path) {
  const std::string_view text = TrimWhitespace(text_or_path);
  nlohmann::ordered_json kwargs = !text.empty() && text.front() == '{'
                                      ? ParseOrderedJson(text_or_path, "--kwargs")
                                      : ReadOrderedJsonFile(text_or_path, "--kwargs");
  Require(kwargs.is_object(), "--kwargs must be a JSON object");
  return kwargs;
}

nlohmann::ordered_json ReadMessagesFile(const std::string& path, nlohmann::ordered_json* tools) {
  nlohmann::ordered_json messages = ReadOrderedJsonFile(path, "--messages");
  if (messages.is_object()) {
    Require(messages.contains("messages"), "the --messages file " + path +
                                               " holds an object without \"messages\"; give an array of messages "
                                               "or {\"messages\": [...]}");
    if (messages.contains("tools") && !messages["tools"].is_null()) *tools = messages["tools"];
    nlohmann::ordered_json inner = messages["messages"];
    messages = std::move(inner);
  }
  Require(messages.is_array(), "the --messages file " + path + " must hold a JSON array of messages");
  return messages;
}

}  // namespace epwa::cli
