// epwa run: generate text from a prompt, streaming tokens as they come.
#include <cstdio>
#include <iostream>
#include <optional>

#include "base/error.h"
#include "base/sysinfo.h"
#include "cli.h"
#include "watermark/logprobs.h"
#include "watermark/processor.h"

namespace epwa::cli {
namespace {

// Streams the text of generated tokens. SentencePiece decoders drop the
// leading space of the first token and byte-fallback tokens may end in the
// middle of a UTF-8 character, so the text is always decoded with a few
// prompt tokens in front and only complete characters are printed.
class TextStream {
 public:
  TextStream(const Tokenizer& tok, std::span<const int32_t> prompt) : tok_(tok) {
    const size_t keep = std::min<size_t>(prompt.size(), 4);
    ids_.assign(prompt.end() - keep, prompt.end());
    prefix_ = Text();
  }
  // Returns the newly completed text after appending `token`.
  std::string Push(int32_t token) {
    ids_.push_back(token);
    std::string full = Text();
    if (full.compare(0, prefix_.size(), prefix_) != 0) return "";
    std::string text = full.substr(prefix_.size());
    // Hold back a trailing replacement character: the next byte token may
    // complete it.
    static const std::string kReplacement = "\xEF\xBF\xBD";
    size_t end = text.size();
    if (end >= 3 && text.compare(end - 3, 3, kReplacement) == 0) end -= 3;
    if (end <= printed_) return "";
    std::string delta = text.substr(printed_, end - printed_);
    printed_ = end;
    return delta;
  }
  std::string Flush() {
    std::string full = Text();
    if (full.size() < prefix_.size() + printed_) return "";
    std::string rest = full.substr(prefix_.size() + printed_);
    printed_ += rest.size();
    return rest;
  }

 private:
  // Special tokens (BOS, EOS) are control symbols, not text to show.
  std::string Text() const { return tok_.Decode(ids_, /*skip_special_tokens=*/true); }

  const Tokenizer& tok_;
  std::vector<int32_t> ids_;
  std::string prefix_;
  size_t printed_ = 0;
};

}  // namespace

Runner RegisterRun(CLI::App& app) {
  auto* cmd = app.add_subcommand("run", "generate text from a prompt");
  struct Flags {
    ModelFlags model;
    std::string prompt, prompt_file;
    std::optional<int32_t> max_new_tokens;
    std::optional<float> temperature, top_p, min_p, repeat_penalty;
    std::optional<int32_t> top_k;
    int32_t repeat_last_n = 64;
    uint64_t seed = 0;
    bool json = false;
    bool ignore_eos = false;
    int logprobs = 0;
    WatermarkFlags wm;
  };
  auto f = std::make_shared<Flags>();
  AddModelFlags(cmd, &f->model);
  auto* prompt = cmd->add_option("-p,--prompt", f->prompt, "prompt text");
  auto* prompt_file = cmd->add_option("-f,--prompt-file", f->prompt_file, "read the prompt from a file");
  prompt->excludes(prompt_file);
  cmd->add_option("-n,--max-tokens", f->max_new_tokens, "tokens to generate (default 64)")
      ->check(CLI::Range(0, 1 << 20));
  cmd->add_option("--temp,--temperature", f->temperature, "sampling temperature; 0 = greedy")
      ->check(FiniteNumber() & CLI::Range(0.0f, 100.0f));
  cmd->add_option("--top-k", f->top_k, "keep the k most likely tokens; 0 = off")
      ->check(CLI::Range(0, 1 << 30));
  cmd->add_option("--top-p", f->top_p, "nucleus sampling mass in (0, 1]; 1 = off")
      ->check(FiniteNumber() & CLI::Range(1e-6f, 1.0f));
  cmd->add_option("--min-p", f->min_p, "drop tokens below min-p x the top probability; 0 = off")
      ->check(FiniteNumber() & CLI::Range(0.0f, 1.0f));
  cmd->add_option("--repeat-penalty", f->repeat_penalty, "repetition penalty; 1 = off")
      ->check(FiniteNumber() & CLI::Range(0.01f, 100.0f));
  cmd->add_option("--repeat-last-n", f->repeat_last_n, "tokens the repetition penalty looks back at")
      ->check(CLI::Range(0, 1 << 20));
  cmd->add_option("--seed", f->seed, "seed of the sampler's PRNG (xoshiro256**)")
      ->transform(Uint64Number());
  cmd->add_flag("--json", f->json, "print one JSON object instead of streaming");
  cmd->add_flag("--ignore-eos", f->ignore_eos, "keep generating past end-of-sequence tokens");
  AddWatermarkFlags(cmd, &f->wm, /*generation=*/true);
  cmd->add_option("--logprobs", f->logprobs,
                  "with --json: the top K log-probabilities of the model's distribution at each "
                  "generated token (before the watermark and the sampler), as an API returns them")
      ->check(CLI::Range(1, 1000));

  return [f, prompt, prompt_file]() {
    Require(prompt->count() + prompt_file->count() == 1, "run needs a prompt: -p TEXT or -f FILE");
    if (prompt_file->count()) {
      f->prompt = ReadTextFile(f->prompt_file, "the --prompt-file");
      Require(!f->prompt.empty(), "the prompt is empty: the --prompt-file '" + f->prompt_file +
                                      "' has no text");
    }
    Require(!f->prompt.empty(), "the prompt is empty: give some text with -p");
    auto engine = LoadEngine(f->model, /*quiet=*/false);
    const GenerationDefaults& d = engine->defaults();
    GenerateOptions o;
    o.max_new_tokens = f->max_new_tokens.value_or(d.max_new_tokens.value_or(64));
    // Flags override generation_config.json, which overrides epwa's defaults.
    SamplerParams& s = o.sampler;
    if (d.do_sample.has_value() && !*d.do_sample) s.temperature = 0.0f;
    else if (d.temperature) s.temperature = *d.temperature;
    if (d.top_k) s.top_k = *d.top_k;
    if (d.top_p) s.top_p = *d.top_p;
    if (d.min_p) s.min_p = *d.min_p;
    if (d.repetition_penalty) s.repeat_penalty = *d.repetition_penalty;
    if (f->temperature) s.temperature = *f->temperature;
    if (f->top_k) s.top_k = *f->top_k;
    if (f->top_p) s.top_p = *f->top_p;
    if (f->min_p) s.min_p = *f->min_p;
    if (f->repeat_penalty) s.repeat_penalty = *f->repeat_penalty;
    s.repeat_last_n = f->repeat_last_n;
    s.seed = f->seed;

    o.ignore_eos = f->ignore_eos;
    std::unique_ptr<wm::WatermarkProcessor> watermark = MakeWatermark(f->wm, *engine);
    Require(f->logprobs == 0 || f->json, "--logprobs is part of the --json output; add --json");
    wm::LogprobsFile logprobs;
    logprobs.vocab_size = engine->config().vocab_size;
    if (watermark || f->logprobs > 0) {
      o.logits_processor = [&](std::span<float> logits, const RoutingTrace& routing,
                               std::span<const int32_t> context) {
        if (f->logprobs > 0) logprobs.tokens.push_back({0, wm::TopKFromLogits(logits, f->logprobs)});
        if (watermark) watermark->Apply(logits, routing, context);
      };
    }
    std::vector<int32_t> prompt = engine->EncodePrompt(f->prompt);
    engine->ValidatePrompt(prompt);
    TextStream stream(engine->tokenizer(), prompt);
    // The prompt is echoed with the first generated token, not before the
    // prefill, so that a prefill that fails (non-finite logits from damaged
    // weights) leaves nothing on stdout but the error on stderr.
    bool prompt_printed = false;
    auto print_prompt = [&] {
      if (prompt_printed) return;
      std::cout << f->prompt;
      prompt_printed = true;
    };
    if (!f->json) {
      o.on_token = [&](int32_t token) {
        print_prompt();
        std::cout << stream.Push(token);
        std::cout.flush();
        return true;
      };
    }
    GenerateResult r = engine->Generate(prompt, o);
    for (size_t i = 0; i < logprobs.tokens.size() && i < r.tokens.size(); ++i)
      logprobs.tokens[i].id = r.tokens[i];
    const GenerateStats& st = r.stats;
    if (f->json) {
      // Full text of prompt + continuation minus the prompt's own decoding,
      // so the leading space of the first generated word is kept.
      TextStream whole(engine->tokenizer(), prompt);
      std::string generated;
      for (int32_t t : r.tokens) generated += whole.Push(t);
      generated += whole.Flush();
      json out{{"prompt", f->prompt},
                     {"prompt_ids", prompt},
                     {"text", generated},
                     {"ids", r.tokens},
                     {"watermark", watermark ? WatermarkJson(*watermark, *engine) : json(nullptr)},
                     {"sampler",
                      {{"temperature", s.temperature}, {"top_k", s.top_k}, {"top_p", s.top_p},
                       {"min_p", s.min_p}, {"repeat_penalty", s.repeat_penalty},
                       {"repeat_last_n", s.repeat_last_n}, {"seed", s.seed}}},
                     {"stats",
                      {{"load", LoadStatsJson(engine->load_stats())},
                       {"prompt_tokens", st.prompt_tokens},
                       {"generated_tokens", st.generated_tokens},
                       {"prefill_ms", st.prefill_ms},
                       {"decode_ms", st.decode_ms},
                       {"prefill_tokens_per_s", st.prefill_tokens_per_s},
                       {"decode_tokens_per_s", st.decode_tokens_per_s},
                       {"stop_reason", st.stop_reason},
                       {"threads", engine->threads()},
                       {"peak_rss_bytes", PeakRssBytes()}}}};
      if (f->logprobs > 0) out["logprobs"] = wm::LogprobsJson(logprobs);
      PrintJson(out);
    } else {
      print_prompt();  // -n 0 generates nothing
      std::cout << stream.Flush() << "\n";
      std::cout.flush();
      std::fprintf(stderr,
                   "generate: %lld prompt tokens at %.1f tok/s (prefill), %lld tokens at %.1f tok/s "
                   "(decode), stop: %s, %d threads; peak RSS %s (planned %s)\n",
                   (long long)st.prompt_tokens, st.prefill_tokens_per_s,
                   (long long)st.generated_tokens, st.decode_tokens_per_s, st.stop_reason.c_str(),
                   engine->threads(), FormatBytes(PeakRssBytes()).c_str(),
                   FormatBytes(engine->load_stats().planned_bytes).c_str());
      if (watermark) PrintWatermarkLine(*watermark, *engine);
    }
    return 0;
  };
}

}  // namespace epwa::cli
