// epwa eval quant: perplexity, KL divergence, top-1 agreement and router
// agreement of each quantization level against float32 on a text file.
#include <cmath>
#include <cstdio>
#include <sstream>

#include "base/error.h"
#include "cli.h"
#include "runtime/quant_eval.h"

namespace epwa::cli {

Runner RegisterEval(CLI::App& app) {
  auto* eval = app.add_subcommand("eval", "quality measurements");
  eval->require_subcommand(1);
  auto* cmd = eval->add_subcommand(
      "quant", "each quantization level vs none (float32) on a text: perplexity, mean KL, "
               "top-1 token agreement, router top-1 agreement per MoE layer");
  struct Flags {
    ModelFlags model;
    std::string text_file, levels = "fp16,int8,int4";
    int64_t window = 256, max_tokens = 8192;
    bool json = false;
  };
  auto f = std::make_shared<Flags>();
  cmd->add_option("-m,--model", f->model.model_dir, "Hugging Face model folder")
      ->envname("EPW_MODEL_PATH");
  cmd->add_option("-t,--threads", f->model.threads, "worker threads (default: all cores)")
      ->check(CLI::Range(0, 1024));
  cmd->add_option("--text", f->text_file, "UTF-8 text file to score")->required();
  cmd->add_option("--levels", f->levels, "comma-separated levels to compare with none");
  cmd->add_option("--window", f->window, "tokens per scored window (BOS + text)")
      ->check(CLI::Range(int64_t{8}, int64_t{1} << 20));
  cmd->add_option("--max-tokens", f->max_tokens, "text tokens to score at most")
      ->check(CLI::Range(int64_t{16}, int64_t{1} << 30));
  cmd->add_flag("--json", f->json, "print one JSON object");
  cmd->add_flag("--int8-lm-head", f->model.int8_lm_head,
                "the int levels store an untied lm_head as int8 (as the run flag does); the reference stays float32");
  cmd->add_option("--kv-cache", f->model.kv_cache,
                  "KV cache element type of the compared levels: f32 (default), f16 or bf16; the reference keeps "
                  "a float32 cache, and with f16 or bf16 --levels may include none (the cache's cost alone)");
  CLI::App* watermark_cmd = nullptr;
  const Runner watermark = RegisterEvalWatermark(*eval, &watermark_cmd);
  CLI::App* report_cmd = nullptr;
  const Runner report = RegisterEvalReport(*eval, &report_cmd);

  return [f, watermark, watermark_cmd, report, report_cmd]() {
    if (watermark_cmd->parsed()) return watermark();
    if (report_cmd->parsed()) return report();
    std::vector<QuantLevel> levels;
    const DType kv_cache = KvCacheType(f->model);
    std::stringstream ss(f->levels);
    for (std::string item; std::getline(ss, item, ',');) {
      const QuantLevel l = ParseQuantLevel(item);
      Require(l != QuantLevel::kAuto && (l != QuantLevel::kNone || kv_cache != DType::kF32),
              "--levels: compare concrete levels other than none (the reference; none with --kv-cache f16 or "
              "bf16), got '" + item + "'");
      levels.push_back(l);
    }
    Require(!levels.empty(), "--levels is empty");
    auto load = [&](QuantLevel level, DType kv) {
      LoadOptions o;
      o.kv_cache = kv;
      o.model_dir = f->model.model_dir;
      o.threads = f->model.threads;
      o.quant = level;
      o.quant_source = "eval quant";
      o.int8_lm_head = f->model.int8_lm_head;
      o.plan_ctx = f->window;
      return Engine::Load(o);
    };
    auto reference = load(QuantLevel::kNone, DType::kF32);
    const ModelConfig& c = reference->config();
    Require(f->window <= c.ContextLimit(),
            "--window " + std::to_string(f->window) + " exceeds the model's context of " +
                std::to_string(c.ContextLimit()));
    const std::string text = ReadTextFile(f->text_file);
    std::vector<int32_t> ids = reference->tokenizer().Encode(text, /*add_special_tokens=*/false);
    Require(ids.size() >= 16, f->text_file + ": too little text to score (" +
                                  std::to_string(ids.size()) + " tokens; need at least 16)");
    if (static_cast<int64_t>(ids.size()) > f->max_tokens) ids.resize(f->max_tokens);
    const int32_t bos = reference->defaults().bos_token_id;
    const int64_t body = f->window - (bos >= 0 ? 1 : 0);
    std::vector<std::vector<int32_t>> windows;
    for (size_t at = 0; at + 2 <= ids.size(); at += body) {
      const size_t end = std::min(ids.size(), at + static_cast<size_t>(body));
      std::vector<int32_t> w;
      w.reserve(end - at + 1);
      if (bos >= 0) w.push_back(bos);
      for (size_t k = at; k < end; ++k) w.push_back(ids[k]);
      windows.push_back(std::move(w));
    }
    std::vector<ScoreResult> ref_scores;
    for (const auto& w : windows) ref_scores.push_back(reference->Score(w));

    json results = json::array();
    if (!f->json)
      std::printf("%zu windows of up to %lld tokens, %zu text tokens from %s\n\n", windows.size(),
                  static_cast<long long>(f->window), ids.size(), f->text_file.c_str());
    bool header = false;
    for (QuantLevel level : levels) {
      auto engine = load(level, kv_cache);
      QuantComparison cmp;
      for (size_t i = 0; i < windows.size(); ++i) {
        ScoreResult r = engine->Score(windows[i]);
        cmp.AddWindow(windows[i], ref_scores[i].logits, r.logits, c.vocab_size,
                      ref_scores[i].routing, r.routing);
      }
      const std::vector<double> router = cmp.RouterTop1Agreement();
      results.push_back({{"level", QuantLevelName(level)},
                         {"weights_bytes", engine->load_stats().converted_bytes +
                                               engine->load_stats().mapped_bytes},
                         {"positions", cmp.positions()},
                         {"perplexity", cmp.Perplexity()},
                         {"reference_perplexity", cmp.ReferencePerplexity()},
                         {"mean_kl", cmp.MeanKl()},
                         {"max_kl", cmp.MaxKl()},
                         {"top1_agreement", cmp.Top1Agreement()},
                         {"router_top1_agreement", router}});
      if (f->json) continue;
      if (!header) {
        std::printf("%-6s %10s %10s %10s %10s %9s  %s\n", "level", "weights", "perplexity",
                    "mean KL", "max KL", "top-1", "router top-1 agreement per MoE layer");
        std::printf("%-6s %10s %10.3f %10s %10s %9s\n", "none",
                    FormatBytes(reference->load_stats().converted_bytes +
                                reference->load_stats().mapped_bytes).c_str(),
                    cmp.ReferencePerplexity(), "-", "-", "-");
        header = true;
      }
      std::string routers;
      for (double a : router) {
        char buf[16];
        std::snprintf(buf, sizeof buf, "%s%.1f%%", routers.empty() ? "" : " ", 100 * a);
        routers += buf;
      }
      std::printf("%-6s %10s %10.3f %10.5f %10.4f %8.2f%%  %s\n", QuantLevelName(level),
                  FormatBytes(engine->load_stats().converted_bytes + engine->load_stats().mapped_bytes).c_str(),
                  cmp.Perplexity(), cmp.MeanKl(), cmp.MaxKl(), 100 * cmp.Top1Agreement(),
                  routers.c_str());
    }
    if (f->json)
      PrintJson(json{{"model_dir", f->model.model_dir},
                     {"text_file", f->text_file},
                     {"text_tokens", ids.size()},
                     {"windows", windows.size()},
                     {"window", f->window},
                     {"levels", results}});
    return 0;
  };
}

}  // namespace epwa::cli
