// epwa chat: an interactive, multi-turn conversation with a model, rendered
// with its chat template and streamed as it is generated, watermarked when
// --watermark is given.
//
// Input is read line by line from standard input, so the same command works
// at a terminal and in a pipe (one user message per line). A line ending in
// a backslash continues on the next line. Commands: /reset, /system TEXT,
// /save FILE, /help, /exit. Ctrl-C stops the reply being generated (the part
// already written stays in the conversation); at the prompt it ends the chat.
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <iostream>

#include "base/error.h"
#include "base/text.h"
#include "cli.h"
#include "io/atomic_file.h"
#include "serve/chat_session.h"
#include "template/chat_template.h"

namespace epwa::cli {
namespace {

volatile std::sig_atomic_t g_interrupted = 0;

void OnInterrupt(int) { g_interrupted = 1; }

// SIGINT sets a flag instead of ending the process; without SA_RESTART a
// read blocked at the prompt returns, so the loop sees the flag there too.
void CatchInterrupt() {
  struct sigaction action{};
  action.sa_handler = OnInterrupt;
  sigemptyset(&action.sa_mask);
  action.sa_flags = 0;
  sigaction(SIGINT, &action, nullptr);
}

const char* kHelp =
    "commands: /reset (forget the conversation), /system TEXT (set the system message and start over),\n"
    "          /save FILE (write the conversation as JSON messages), /exit (or end of input, or Ctrl-C)\n"
    "a line ending in \\ continues on the next line; Ctrl-C while the model writes stops the reply\n";

// One user message: lines joined while they end in a backslash. False at the
// end of the input (or an interrupt at the prompt).
bool ReadMessage(bool interactive, std::string* message) {
  message->clear();
  std::string line;
  bool first = true;
  while (true) {
    if (interactive) {
      std::fputs(first ? "> " : ". ", stderr);
      std::fflush(stderr);
    }
    if (!std::getline(std::cin, line)) return !message->empty() && !g_interrupted;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    first = false;
    if (!line.empty() && line.back() == '\\') {
      line.pop_back();
      *message += line + "\n";
      continue;
    }
    *message += line;
    return true;
  }
}

void SaveConversation(const ChatSession& chat, const std::string& path) {
  const std::string text = chat.Messages().dump(2) + "\n";
  AtomicFile out(path);
  out.Write(text.data(), text.size());
  out.Commit();
}

}  // namespace

Runner RegisterChat(CLI::App& app) {
  auto* cmd = app.add_subcommand("chat", "talk with a model: multi-turn, streamed, with its chat template");
  struct Flags {
    ModelFlags model;
    SamplingFlags sampling;
    WatermarkFlags wm;
    std::string system, kwargs, transcript;
  };
  auto f = std::make_shared<Flags>();
  AddModelFlags(cmd, &f->model);
  AddSamplingFlags(cmd, &f->sampling, /*default_max_tokens=*/512);
  AddWatermarkFlags(cmd, &f->wm, /*generation=*/true);
  cmd->add_option("--system", f->system, "system message that opens the conversation");
  cmd->add_option("--kwargs", f->kwargs,
                  "extra template variables as a JSON object, e.g. '{\"enable_thinking\": false}'");
  cmd->add_option("--transcript", f->transcript,
                  "write the conversation as JSON messages to this file when the chat ends");

  return [f]() {
    ChatRenderOptions render;
    if (!f->kwargs.empty()) {
      try {
        render.kwargs = nlohmann::ordered_json::parse(f->kwargs);
      } catch (const nlohmann::json::exception&) {
        throw Error("--kwargs is not a JSON object: " + f->kwargs);
      }
      Require(render.kwargs.is_object(), "--kwargs must be a JSON object");
    }
    auto engine = LoadEngine(f->model, /*quiet=*/false);
    ChatTemplate chat_template = ChatTemplate::FromModelDir(engine->model_dir());
    ChatSession chat(*engine, std::move(chat_template), render);
    chat.SetSystem(f->system);
    const GenerateOptions base = MakeGenerateOptions(f->sampling, *engine, 512);
    const bool interactive = isatty(STDIN_FILENO);
    if (interactive) std::fputs(kHelp, stderr);
    CatchInterrupt();

    std::string message;
    while (!g_interrupted && ReadMessage(interactive, &message)) {
      const std::string_view trimmed = TrimWhitespace(message);
      if (trimmed.empty()) continue;
      if (trimmed == "/exit" || trimmed == "/quit") break;
      if (trimmed == "/help") {
        std::fputs(kHelp, stderr);
        continue;
      }
      if (trimmed == "/reset") {
        chat.Reset();
        std::fputs("(conversation cleared)\n", stderr);
        continue;
      }
      if (trimmed.rfind("/system", 0) == 0 && (trimmed.size() == 7 || trimmed[7] == ' ')) {
        chat.SetSystem(std::string(TrimWhitespace(trimmed.substr(7))));
        chat.Reset();
        std::fputs("(system message set; conversation cleared)\n", stderr);
        continue;
      }
      if (trimmed.rfind("/save ", 0) == 0) {
        const std::string path(TrimWhitespace(trimmed.substr(6)));
        try {
          SaveConversation(chat, path);
          std::fprintf(stderr, "(saved %d turns to %s)\n", chat.Turns(), path.c_str());
        } catch (const Error& e) {
          std::fprintf(stderr, "epwa: error: %s\n", e.what());
        }
        continue;
      }

      GenerateOptions options = base;
      std::unique_ptr<wm::WatermarkProcessor> watermark = MakeWatermark(f->wm, *engine);
      if (watermark) {
        options.logits_processor = [&watermark](std::span<float> logits, const RoutingTrace& routing,
                                                std::span<const int32_t> context) {
          watermark->Apply(logits, routing, context);
        };
      }
      options.on_token = [](int32_t) { return !g_interrupted; };
      ChatReply reply;
      try {
        reply = chat.Reply(message, options, [](const std::string& piece) {
          std::fwrite(piece.data(), 1, piece.size(), stdout);
          std::fflush(stdout);
        });
      } catch (const Error& e) {
        // The turn is not recorded; the conversation goes on.
        std::fprintf(stderr, "epwa: error: %s\n", e.what());
        if (!interactive) return 1;
        continue;
      }
      std::fputs("\n", stdout);
      std::fflush(stdout);
      if (g_interrupted) {
        g_interrupted = 0;
        std::fputs("(reply stopped)\n", stderr);
      }
      const GenerateStats& st = reply.result.stats;
      if (interactive)
        std::fprintf(stderr, "(%lld prompt tokens, %lld generated at %.1f tok/s, stop: %s)\n",
                     (long long)st.prompt_tokens, (long long)st.generated_tokens, st.decode_tokens_per_s,
                     st.stop_reason.c_str());
      if (watermark) PrintWatermarkLine(*watermark, *engine);
    }
    if (!f->transcript.empty()) SaveConversation(chat, f->transcript);
    return 0;
  };
}

}  // namespace epwa::cli
