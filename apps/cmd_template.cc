// epwa template: a model's chat template applied to a conversation, printed
// exactly (no newline added), as transformers' apply_chat_template(...,
// tokenize=False) returns it.
#include <cstdio>
#include <ctime>

#include "base/error.h"
#include "base/file_read.h"
#include "base/text.h"
#include "cli.h"
#include "template/chat_template.h"

namespace epwa::cli {
namespace {

using OrderedJson = nlohmann::ordered_json;

// "2025-08-05", "2025-08-05 12:34:56" or "2025-08-05T12:34:56", local time.
std::tm ParseNow(const std::string& text) {
  std::tm tm{};
  int year = 0, month = 0, day = 0, hour = 0, minute = 0, second = 0;
  char sep = ' ';
  const int fields = std::sscanf(text.c_str(), "%4d-%2d-%2d%c%2d:%2d:%2d", &year, &month, &day, &sep, &hour, &minute, &second);
  Require((fields == 3 || (fields == 7 && (sep == ' ' || sep == 'T'))) && month >= 1 && month <= 12 && day >= 1 &&
              day <= 31 && hour < 24 && minute < 60 && second < 61,
          "--now must be YYYY-MM-DD or YYYY-MM-DDTHH:MM:SS, not '" + text + "'");
  tm.tm_year = year - 1900;
  tm.tm_mon = month - 1;
  tm.tm_mday = day;
  tm.tm_hour = hour;
  tm.tm_min = minute;
  tm.tm_sec = second;
  tm.tm_isdst = -1;
  std::tm normalized = tm;
  std::mktime(&normalized);  // fills in the weekday and day of the year for %a, %j, ...
  Require(normalized.tm_mday == day && normalized.tm_mon == month - 1, "--now names a day that does not exist: " + text);
  return normalized;
}

}  // namespace

Runner RegisterTemplate(CLI::App& app) {
  auto* cmd = app.add_subcommand("template", "apply the model's chat template to a conversation and print the prompt");
  struct Flags {
    std::string model_dir, messages, tools, documents, kwargs, now;
    bool no_generation_prompt = false;
  };
  auto f = std::make_shared<Flags>();
  cmd->add_option("-m,--model", f->model_dir, "model folder (chat_template.jinja or tokenizer_config.json)")
      ->envname("EPW_MODEL_PATH");
  cmd->add_option("--messages", f->messages,
                  "JSON file: an array of messages ({\"role\", \"content\", ...}) or an object with \"messages\"")
      ->required();
  cmd->add_flag("--no-generation-prompt", f->no_generation_prompt,
                "do not open an assistant turn at the end (add_generation_prompt=False)");
  cmd->add_option("--tools", f->tools, "JSON file: an array of tool schemas");
  cmd->add_option("--documents", f->documents, "JSON file: an array of {\"title\", \"text\"} documents");
  cmd->add_option("--kwargs", f->kwargs,
                  "extra template variables: a JSON object, inline (e.g. '{\"enable_thinking\": false}') or a file");
  cmd->add_option("--now", f->now,
                  "the local time strftime_now() sees, YYYY-MM-DD[THH:MM:SS] (default: now), for reproducible output");

  return [f]() {
    Require(!f->model_dir.empty(), "template needs -m MODEL_DIR");
    OrderedJson file_tools;
    const OrderedJson messages = ReadMessagesFile(f->messages, &file_tools);
    ChatRenderOptions options;
    options.add_generation_prompt = !f->no_generation_prompt;
    options.tools = file_tools;
    if (!f->tools.empty()) options.tools = ReadOrderedJsonFile(f->tools, "--tools");
    if (!f->documents.empty()) options.documents = ReadOrderedJsonFile(f->documents, "--documents");
    if (!f->kwargs.empty()) options.kwargs = ParseKwargs(f->kwargs);
    if (!f->now.empty()) options.now = ParseNow(f->now);
    const ChatTemplate chat = ChatTemplate::FromModelDir(f->model_dir);
    const std::string prompt = chat.Render(messages, options);
    std::fwrite(prompt.data(), 1, prompt.size(), stdout);
    return 0;
  };
}

}  // namespace epwa::cli
