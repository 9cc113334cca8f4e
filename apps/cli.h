// Shared pieces of the epwa command-line frontends.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "runtime/engine.h"
#include "watermark/key.h"
#include "watermark/processor.h"

namespace epwa::cli {

using nlohmann::json;

// Options every model-loading command shares.
struct ModelFlags {
  std::string model_dir;
  int threads = 0;
  std::optional<std::string> quant;
  int64_t ctx = 0;  // 0: the engine's default plan context
  std::optional<std::string> mem_budget;
  bool no_cache = false;
  bool no_mmap = false;      // --no-mmap (LoadOptions::copy_weights)
  int parallel = 1;          // sequences the plan holds at once (--parallel)
  int64_t batch_tokens = 0;  // rows per forward pass (--batch-tokens); 0: --ctx
  bool float_activations = false;  // --float-activations (kernels::SetFloatActivations)
  bool bf16_activations = false;   // --bf16-activations (kernels::SetBf16Activations)
  bool split_activations = false;  // --split-activations (kernels::SetSplitBf16Activations)
  bool int8_lm_head = false;       // --int8-lm-head (PlanContext::int8_lm_head)
  std::string kv_cache = "f32";    // --kv-cache / EPW_KV_CACHE (LoadOptions::kv_cache)
};
// "6G", "512M", "1500000000" -> bytes (K/M/G/T are powers of 1024); throws
// epwa::Error naming `flag` otherwise.
uint64_t ParseByteSize(const std::string& text, const std::string& flag);
void AddModelFlags(CLI::App* cmd, ModelFlags* flags);
// --parallel N and --batch-tokens N, for the commands that generate or plan.
void AddBatchFlags(CLI::App* cmd, ModelFlags* flags);
// EPWA_ISA and the activation flags, set process-wide in the kernels (the
// memory plan counts the scratch of the kernels they select).
void ApplyKernelFlags(const ModelFlags& flags);
std::unique_ptr<Engine> LoadEngine(const ModelFlags& flags, bool quiet);
// The KV cache element type --kv-cache (or EPW_KV_CACHE) names; throws
// epwa::Error for anything but f32, f16 or bf16.
DType KvCacheType(const ModelFlags& flags);

// "1,2,3" -> {1, 2, 3}; throws epwa::Error naming `flag` on anything else.
std::vector<int32_t> ParseIdList(const std::string& text, const std::string& flag);
// The whole regular file `path` of at most kMaxTextInputBytes; `what` names
// it in messages, e.g. "the --prompt-file".
std::string ReadTextFile(const std::string& path, const std::string& what = "the input file");
// A CLI11 transform for a uint64 option (--seed): decimal digits only, at
// most 2^64-1. CLI11's own conversion clamps larger values, wraps "-1" and
// reads "010" as octal. Add it with ->transform(), not ->check(): it rewrites
// the text into canonical decimal.
CLI::Validator Uint64Number();

void PrintLoadStats(const LoadStats& s);  // one block on stderr

// Prints `j` on stdout followed by a newline, indented or on one line (JSON
// Lines, for commands that print one object per input). Invalid UTF-8 in
// strings (from byte-fallback tokens) is replaced rather than throwing.
void PrintJson(const json& j, bool one_line = false);

// JSON text that came from `what`, keeping the key order (a template that
// iterates over a dict sees its keys in file order, as with Python); throws
// epwa::Error naming `what`.
nlohmann::ordered_json ParseOrderedJson(const std::string& text, const std::string& what);
nlohmann::ordered_json ReadOrderedJsonFile(const std::string& path, const std::string& flag);
// --kwargs: a JSON object given inline ('{...}') or as a file.
nlohmann::ordered_json ParseKwargs(const std::string& text_or_path);
// A --messages file: an array of messages, or an object with "messages" (and
// optionally "tools", stored in *tools, else left alone).
nlohmann::ordered_json ReadMessagesFile(const std::string& path, nlohmann::ordered_json* tools);

// Sampling flags shared by run and chat: each one given overrides
// generation_config.json, which overrides epwa's defaults.
struct SamplingFlags {
  std::optional<int32_t> max_new_tokens;
  std::optional<float> temperature, top_p, min_p, repeat_penalty;
  std::optional<int32_t> top_k;
  int32_t repeat_last_n = 64;
  uint64_t seed = 0;
  bool ignore_eos = false;
};
// `default_max_tokens` is what -n means when neither the flag nor
// generation_config.json sets it.
void AddSamplingFlags(CLI::App* cmd, SamplingFlags* flags, int32_t default_max_tokens);
GenerateOptions MakeGenerateOptions(const SamplingFlags& flags, const Engine& engine, int32_t default_max_tokens);
json SamplerJson(const SamplerParams& s);

// Watermark flags shared by run and detect.
struct WatermarkFlags {
  std::string scheme;  // run: "" = no watermark; detect: gsg (default), ewp or kgw
  std::string key_file;
  double gamma = 0.25;
  double delta = 2.0;
  int router_layer = wm::kSchemeDefaultLayer;
  std::string expert_deltas;
  CLI::Option* scheme_option = nullptr;
  std::vector<CLI::Option*> needs_scheme;  // run: flags that mean nothing without --watermark
};
void AddWatermarkFlags(CLI::App* cmd, WatermarkFlags* flags, bool generation);
// A CLI11 check that refuses NaN and +-inf (CLI::Range lets NaN through, as
// every comparison with NaN is false). Combine: FiniteNumber() & CLI::Range(a, b).
CLI::Validator FiniteNumber();
// The key named by --key-file or $EPWA_KEY_FILE.
wm::SecretKey LoadKey(const WatermarkFlags& flags);
wm::WatermarkParams WatermarkParamsFrom(const WatermarkFlags& flags, const Engine& engine);
// run: null when no --watermark was given; throws epwa::Error for watermark
// flags without --watermark.
std::unique_ptr<wm::WatermarkProcessor> MakeWatermark(const WatermarkFlags& flags, const Engine& engine);
json WatermarkJson(const wm::WatermarkProcessor& w, const Engine& engine);
void PrintWatermarkLine(const wm::WatermarkProcessor& w, const Engine& engine);

// Registration of each subcommand: adds it to `app` and returns the function
// that runs it after parsing (returns the process exit code).
using Runner = std::function<int()>;
Runner RegisterInfo(CLI::App& app);
Runner RegisterRun(CLI::App& app);
Runner RegisterScore(CLI::App& app);
Runner RegisterTokenize(CLI::App& app);
Runner RegisterSynth(CLI::App& app);
Runner RegisterBench(CLI::App& app);
Runner RegisterPlan(CLI::App& app);
Runner RegisterEval(CLI::App& app);
Runner RegisterBenchLoad(CLI::App& app);
Runner RegisterHash(CLI::App& app);
Runner RegisterKeygen(CLI::App& app);
Runner RegisterDetect(CLI::App& app);
Runner RegisterOracle(CLI::App& app);
Runner RegisterTemplate(CLI::App& app);
Runner RegisterServe(CLI::App& app);
Runner RegisterChat(CLI::App& app);
// `eval watermark`, registered under `eval`.
Runner RegisterEvalWatermark(CLI::App& eval, CLI::App** cmd);
Runner RegisterEvalReport(CLI::App& eval, CLI::App** cmd);

}  // namespace epwa::cli
