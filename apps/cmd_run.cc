// epwa run: generate text from a prompt, streaming tokens as they come.
#include <cstdio>
#include <iostream>
#include <optional>

#include "base/error.h"
#include "base/sysinfo.h"
#include "base/timer.h"
#include "cli.h"
#include "runtime/batch_engine.h"
#include "serve/chat_session.h"
#include "template/chat_template.h"
#include "tokenizer/text_stream.h"
#include "watermark/logprobs.h"
#include "watermark/processor.h"

namespace epwa::cli {
namespace {

// The prompts of a --prompts-file with their 1-based line numbers: one per
// line, lines of only whitespace skipped, a trailing CR dropped (files from
// Windows). Throws epwa::Error when the file holds no prompt.
std::vector<std::pair<int, std::string>> ReadPromptLines(const std::string& path) {
  const std::string text = ReadTextFile(path, "the --prompts-file");
  std::vector<std::pair<int, std::string>> lines;
  size_t begin = 0;
  for (int n = 1; begin < text.size(); ++n) {
    size_t end = text.find('\n', begin);
    if (end == std::string::npos) end = text.size();
    std::string line = text.substr(begin, end - begin);
    begin = end + 1;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    lines.emplace_back(n, std::move(line));
  }
  Require(!lines.empty(), "the --prompts-file '" + path + "' has no prompt (one per line)");
  return lines;
}

}  // namespace

Runner RegisterRun(CLI::App& app) {
  auto* cmd = app.add_subcommand("run", "generate text from a prompt");
  struct Flags {
    ModelFlags model;
    std::string prompt, prompt_file, prompts_file, messages, kwargs;
    SamplingFlags sampling;
    bool json = false;
    int logprobs = 0;
    WatermarkFlags wm;
  };
  auto f = std::make_shared<Flags>();
  AddModelFlags(cmd, &f->model);
  auto* prompt = cmd->add_option("-p,--prompt", f->prompt, "prompt text");
  auto* prompt_file = cmd->add_option("-f,--prompt-file", f->prompt_file, "read the prompt from a file");
  auto* prompts_file = cmd->add_option(
      "--prompts-file", f->prompts_file,
      "generate for every line of a file (one prompt per line, blank lines skipped), "
      "--parallel of them at a time in one batch; prints each in order");
  auto* messages = cmd->add_option(
      "--messages", f->messages,
      "a conversation (JSON file: an array of messages, or an object with \"messages\" and optional "
      "\"tools\"), rendered with the model's chat template; prints the assistant's reply");
  auto* kwargs = cmd->add_option("--kwargs", f->kwargs,
                                 "with --messages: extra template variables as a JSON object, "
                                 "e.g. '{\"enable_thinking\": false}'");
  kwargs->needs(messages);
  prompt->excludes(prompt_file);
  prompts_file->excludes(prompt)->excludes(prompt_file);
  messages->excludes(prompt)->excludes(prompt_file)->excludes(prompts_file);
  AddBatchFlags(cmd, &f->model);
  AddSamplingFlags(cmd, &f->sampling, /*default_max_tokens=*/64);
  cmd->add_flag("--json", f->json, "print one JSON object instead of streaming");
  AddWatermarkFlags(cmd, &f->wm, /*generation=*/true);
  cmd->add_option("--logprobs", f->logprobs,
                  "with --json: the top K log-probabilities of the model's distribution at each "
                  "generated token (before the watermark and the sampler), as an API returns them")
      ->check(CLI::Range(1, 1000));

  auto make_options = [f](const Engine& engine) { return MakeGenerateOptions(f->sampling, engine, 64); };
  auto sampler_json = [](const SamplerParams& s) { return SamplerJson(s); };
  // Prompt + continuation as decoded text minus the prompt's own decoding,
  // so the leading space of the first generated word is kept.
  auto continuation = [](const Tokenizer& tok, std::span<const int32_t> prompt,
                         std::span<const int32_t> tokens) {
    TextStream whole(tok, prompt);
    std::string generated;
    for (int32_t t : tokens) generated += whole.Push(t);
    return generated + whole.Flush();
  };

  // --prompts-file: every prompt is a sequence of one BatchEngine, --parallel
  // at a time, each with its own sampler (same --seed), watermark processor
  // and log-probabilities. Output comes in prompt order once all are done.
  auto run_many = [f, make_options, sampler_json, continuation]() {
    const auto lines = ReadPromptLines(f->prompts_file);
    auto engine = LoadEngine(f->model, /*quiet=*/false);
    Require(f->logprobs == 0 || f->json, "--logprobs is part of the --json output; add --json");
    const GenerateOptions base = make_options(*engine);
    struct Item {
      int line = 0;
      std::string text;
      std::vector<int32_t> ids;
      std::unique_ptr<wm::WatermarkProcessor> watermark;
      wm::LogprobsFile logprobs;
      SequenceResult result;
    };
    std::vector<Item> items(lines.size());
    for (size_t i = 0; i < lines.size(); ++i) {
      Item& it = items[i];
      it.line = lines[i].first;
      it.text = lines[i].second;
      try {
        it.ids = engine->EncodePrompt(it.text);
        engine->ValidatePrompt(it.ids);
      } catch (const Error& e) {
        throw Error("line " + std::to_string(it.line) + " of the --prompts-file: " + e.what());
      }
      it.watermark = MakeWatermark(f->wm, *engine);
      it.logprobs.vocab_size = engine->config().vocab_size;
    }
    BatchEngine batch(*engine);
    Stopwatch wall;
    for (Item& it : items) {
      GenerateOptions o = base;
      if (it.watermark || f->logprobs > 0) {
        o.logits_processor = [&it, f](std::span<float> logits, const RoutingTrace& routing,
                                      std::span<const int32_t> context) {
          if (f->logprobs > 0) it.logprobs.tokens.push_back({0, wm::TopKFromLogits(logits, f->logprobs)});
          if (it.watermark) it.watermark->Apply(logits, routing, context);
        };
      }
      try {
        batch.Submit(it.ids, std::move(o), [&it](SequenceResult&& r) { it.result = std::move(r); });
      } catch (const Error& e) {
        throw Error("line " + std::to_string(it.line) + " of the --prompts-file: " + e.what());
      }
    }
    batch.RunUntilIdle();
    const double wall_ms = wall.Millis();
    int64_t generated = 0;
    int failed = 0;
    for (size_t i = 0; i < items.size(); ++i) {
      Item& it = items[i];
      const SequenceResult& r = it.result;
      const GenerateStats& st = r.stats;
      generated += st.generated_tokens;
      for (size_t k = 0; k < it.logprobs.tokens.size() && k < r.tokens.size(); ++k)
        it.logprobs.tokens[k].id = r.tokens[k];
      const std::string text = continuation(engine->tokenizer(), it.ids, r.tokens);
      if (r.error) {
        ++failed;
        std::fprintf(stderr, "epwa: error: line %d of the --prompts-file: %s\n", it.line,
                     r.error_message.c_str());
      }
      if (f->json) {
        json out{{"index", i},
                 {"line", it.line},
                 {"prompt", it.text},
                 {"prompt_ids", it.ids},
                 {"text", text},
                 {"ids", r.tokens},
                 {"watermark", it.watermark ? WatermarkJson(*it.watermark, *engine) : json(nullptr)},
                 {"sampler", sampler_json(base.sampler)},
                 {"stats",
                  {{"prompt_tokens", st.prompt_tokens},
                   {"generated_tokens", st.generated_tokens},
                   {"prefill_ms", st.prefill_ms},
                   {"decode_ms", st.decode_ms},
                   {"decode_tokens_per_s", st.decode_tokens_per_s},
                   {"queued_ms", r.queued_ms},
                   {"first_token_ms", r.token_ms.empty() ? json(nullptr) : json(r.token_ms.front())},
                   {"stop_reason", st.stop_reason},
                   {"parallel", batch.parallel()},
                   {"threads", engine->threads()},
                   {"planned_bytes", engine->load_stats().planned_bytes},
                   {"peak_rss_bytes", PeakRssBytes()}}}};
        if (r.error) out["error"] = r.error_message;
        if (f->logprobs > 0) out["logprobs"] = wm::LogprobsJson(it.logprobs);
        PrintJson(out, /*one_line=*/true);
      } else {
        std::cout << "=== " << (i + 1) << " of " << items.size() << " (line " << it.line << ", "
                  << st.generated_tokens << " tokens, stop: " << st.stop_reason << ")\n"
                  << it.text << text << "\n";
        if (it.watermark) PrintWatermarkLine(*it.watermark, *engine);
      }
    }
    std::cout.flush();
    const BatchStats& bs = batch.stats();
    std::fprintf(stderr,
                 "batch: %zu sequences, --parallel %d, %lld forward passes (at most %lld rows), "
                 "%lld tokens in %.1f ms = %.1f tok/s in all, %d threads; peak RSS %s (planned %s)\n",
                 items.size(), batch.parallel(), (long long)bs.steps, (long long)bs.max_rows,
                 (long long)generated, wall_ms, generated / std::max(wall_ms / 1e3, 1e-9),
                 engine->threads(), FormatBytes(PeakRssBytes()).c_str(),
                 FormatBytes(engine->load_stats().planned_bytes).c_str());
    return failed ? 1 : 0;
  };

  return [f, prompt, prompt_file, prompts_file, messages, make_options, sampler_json, continuation, run_many]() {
    Require(prompt->count() + prompt_file->count() + prompts_file->count() + messages->count() == 1,
            "run needs a prompt: -p TEXT, -f FILE, --prompts-file FILE or --messages FILE");
    if (prompts_file->count()) return run_many();
    if (prompt_file->count()) {
      f->prompt = ReadTextFile(f->prompt_file, "the --prompt-file");
      Require(!f->prompt.empty(), "the prompt is empty: the --prompt-file '" + f->prompt_file +
                                      "' has no text");
    }
    // --messages: the conversation rendered with the chat template is the
    // prompt (the template writes BOS where the model wants one), only the
    // reply is printed, and the template's end-of-turn token ends it.
    nlohmann::ordered_json conversation;
    ChatRenderOptions render;
    if (messages->count()) {
      conversation = ReadMessagesFile(f->messages, &render.tools);
      if (!f->kwargs.empty()) render.kwargs = ParseKwargs(f->kwargs);
    } else {
      Require(!f->prompt.empty(), "the prompt is empty: give some text with -p");
    }
    auto engine = LoadEngine(f->model, /*quiet=*/false);
    GenerateOptions o = make_options(*engine);
    std::vector<int32_t> prompt;
    if (messages->count()) {
      const ChatTemplate chat = ChatTemplate::FromModelDir(engine->model_dir());
      try {
        f->prompt = chat.Render(conversation, render);
      } catch (const jinja::TemplateError& e) {
        throw Error("the chat template refused the --messages conversation: " + std::string(e.what()));
      }
      prompt = engine->tokenizer().Encode(f->prompt, /*add_special_tokens=*/false);
      o.stop_token_ids = ChatStopTokenIds(chat, *engine);
    } else {
      prompt = engine->EncodePrompt(f->prompt);
    }
    const bool echo_prompt = !messages->count();
    const SamplerParams& s = o.sampler;
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
    engine->ValidatePrompt(prompt);
    TextStream stream(engine->tokenizer(), prompt);
    // The prompt is echoed with the first generated token, not before the
    // prefill, so that a prefill that fails (non-finite logits from damaged
    // weights) leaves nothing on stdout but the error on stderr.
    bool prompt_printed = false;
    auto print_prompt = [&] {
      if (prompt_printed) return;
      if (echo_prompt) std::cout << f->prompt;
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
      const std::string generated = continuation(engine->tokenizer(), prompt, r.tokens);
      json out{{"prompt", f->prompt},
                     {"messages", messages->count() ? json(conversation) : json(nullptr)},
                     {"prompt_ids", prompt},
                     {"text", generated},
                     {"ids", r.tokens},
                     {"watermark", watermark ? WatermarkJson(*watermark, *engine) : json(nullptr)},
                     {"sampler", sampler_json(s)},
                     {"stats", GenerateStatsJson(st)}};
      out["stats"]["load"] = LoadStatsJson(engine->load_stats());
      out["stats"]["threads"] = engine->threads();
      out["stats"]["peak_rss_bytes"] = PeakRssBytes();
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
